//! What the stack walk in the kernel needs to know about the code it walks: every
//! object's unwind table ([`table`]), built once per file and shared by every process
//! that maps it, and each traced process's executable mappings, which say which table
//! covers which addresses.
//!
//! A file is known by its device, inode, size and modification time, and by its build
//! id: the same library seen through another path, another container's root or a copy
//! shares one table. Row 0 of the kernel's row array is an invalid row, the table of
//! every file whose call frame information is missing, corrupt, or does not fit: the
//! walk stops in its frames instead of guessing. Anonymous executable memory (JIT code)
//! has no table at all and is walked by frame pointer.
//!
//! Reading a big object's call frame information takes a while (LLVM's: over a second):
//! where nothing waits for it (a process found with `--all`, a library a process mapped
//! while it runs), a thread of its own builds the table, and the process's mappings are
//! written again once it is in place; its frames are cut meanwhile. Where the process
//! waits (the target before its probes go live, the started command held at its dynamic
//! linker), the tables are built first.

mod table;

use std::{
    collections::{HashMap, HashSet},
    fmt,
    fs::File,
    io::Read,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    rc::Rc,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use leakbpf_common::{
    CfaKind, MAX_MAPPINGS, Mapping, ProcessMappings, RBP_UNCHANGED, TRAMPOLINE_MAPPING, UnwindRow,
    UnwindRule,
};
use procfs::process::{MMapPath, Process};
use tokio::sync::mpsc as async_mpsc;

pub use self::table::INVALID;
use self::table::{Built, Table};
use crate::{
    attach::{self, elf::ElfObject},
    kernel::{KernelError, KernelMaps},
};

/// Where a rule at the probed instruction is unknown: placement keeps the stack pointer
/// as it was at the call, so the return address is at it.
pub const AT_CALL: UnwindRule = UnwindRule {
    cfa_offset: 8,
    rbp_offset: RBP_UNCHANGED,
    kind: CfaKind::Rsp as u8,
    flags: 0,
};

/// The name /proc/PID/maps gives the page of uprobe trampolines.
const UPROBES_AREA: &str = "[uprobes]";

#[derive(Debug, thiserror::Error)]
pub enum UnwindError {
    #[error("cannot read the memory map of pid {pid}")]
    Maps { pid: u32, source: procfs::ProcError },
    #[error(transparent)]
    Kernel(#[from] KernelError),
}

/// A file's identity as the file system gives it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct FileKey {
    device: u64,
    inode: u64,
    size: u64,
    modified: i64,
}

/// One file's table, in the kernel's arrays.
#[derive(Debug)]
struct Located {
    first_row: u32,
    rows: u32,
    /// The object's address that row address 0 stands for.
    base: u64,
    /// Its executable segments: (file offset, address, size in the file).
    segments: Vec<(u64, u64, u64)>,
    /// Why it has no table of its own, if it has none.
    missing: Option<String>,
}

/// The page size mappings are aligned to: a segment's mapping starts at its offset
/// rounded down to it.
const PAGE: u64 = 4096;

impl Located {
    /// The address in a process of row address 0, for the executable mapping at `start`
    /// of the file from `offset`.
    fn base_in(&self, start: u64, offset: u64) -> Option<u64> {
        if self.missing.is_some() {
            // Its one invalid row covers every address from the mapping's start.
            return Some(start);
        }
        // Segments may share a page of the file (lld packs them): the executable one
        // whose pages the mapping starts in is the one mapped there.
        let &(segment_offset, address, _) =
            self.segments.iter().find(|&&(segment_offset, _, size)| {
                offset >= segment_offset & !(PAGE - 1) && offset < segment_offset + size.max(1)
            })?;
        let mapped = address.wrapping_add(offset).wrapping_sub(segment_offset);
        Some(start.wrapping_sub(mapped).wrapping_add(self.base))
    }
}

/// A file's table as read, before it is in the kernel's arrays.
pub struct FileTable {
    key: FileKey,
    path: PathBuf,
    build_id: Option<Vec<u8>>,
    segments: Vec<(u64, u64, u64)>,
    /// The table, or why there is none.
    table: Result<Table, String>,
}

/// Reads `file` (named `path` in messages) and builds its table: what takes time.
fn read_table(key: FileKey, mut file: File, path: PathBuf) -> FileTable {
    let mut data = Vec::with_capacity(usize::try_from(key.size).unwrap_or(0));
    let read = file.read_to_end(&mut data);
    let (segments, build_id) = match table::loadable(&data) {
        Ok(loadable) => (loadable.segments, loadable.build_id),
        Err(_) => (Vec::new(), None),
    };
    let table = match read {
        Err(err) => Err(format!("it cannot be read ({err})")),
        Ok(_) => {
            let elf = ElfObject::from_bytes(path.clone(), data);
            match table::build(elf.data(), &attach::wrappers(&elf)) {
                Ok(Built::Table(table)) => Ok(table),
                Ok(Built::Missing) => Err("it has no .eh_frame or .debug_frame".to_owned()),
                Ok(Built::Corrupt(err)) => {
                    Err(format!("its call frame information is corrupt ({err})"))
                }
                Err(err) => Err(err.to_string()),
            }
        }
    };
    FileTable {
        key,
        path,
        build_id,
        segments,
        table,
    }
}

/// The thread that builds tables nobody waits for.
struct Builder {
    requests: mpsc::Sender<(FileKey, File, PathBuf)>,
}

impl Builder {
    fn spawn(results: async_mpsc::UnboundedSender<FileTable>) -> std::io::Result<Self> {
        let (requests, incoming) = mpsc::channel::<(FileKey, File, PathBuf)>();
        thread::Builder::new()
            .name("unwind-tables".into())
            .spawn(move || {
                for (key, file, path) in incoming {
                    if results.send(read_table(key, file, path)).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Self { requests })
    }
}

/// What describing one process took, for `--verbose`.
#[derive(Debug, Default)]
pub struct Described {
    pub mappings: usize,
    /// Mappings left out until their files' tables are built.
    pub pending: usize,
    /// Files read and tabled for it (the others were known already).
    pub new_files: usize,
    pub new_rows: usize,
    /// Files whose frames end the walk: why, by path.
    pub without_table: Vec<(PathBuf, String)>,
    pub elapsed: Duration,
}

impl fmt::Display for Described {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} executable mappings, {} new tables ({} rows) in {} ms",
            self.mappings,
            self.new_files,
            self.new_rows,
            self.elapsed.as_millis()
        )?;
        if self.pending > 0 {
            write!(f, ", {} waiting for their tables", self.pending)?;
        }
        for (path, why) in &self.without_table {
            write!(f, "; no table for {}: {why}", path.display())?;
        }
        Ok(())
    }
}

/// The tables the kernel has, and what it was told of each process.
pub struct Unwinder {
    by_file: HashMap<FileKey, Rc<Located>>,
    by_build_id: HashMap<Vec<u8>, Rc<Located>>,
    /// Rules in the kernel's array, by value: rows name them by index.
    rules: HashMap<UnwindRule, u32>,
    rows_used: u32,
    /// Each process's mappings as last written.
    processes: HashMap<u32, Vec<Mapping>>,
    builder: Builder,
    /// Files the builder is reading, and the processes that map them.
    building: HashMap<FileKey, HashSet<u32>>,
}

/// Whether describing a process waits for the tables of the files it maps.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// The process waits: the tables are built first.
    Yes,
    /// It runs on: files not tabled yet are left to the builder thread, and their
    /// mappings out until [`Unwinder::built`].
    No,
}

impl Unwinder {
    /// Writes the invalid row and rule every file without a table shares, and starts
    /// the builder thread: the tables it builds come on the returned channel, for
    /// [`Unwinder::built`].
    pub fn new(
        maps: &mut KernelMaps,
    ) -> std::io::Result<(Self, async_mpsc::UnboundedReceiver<FileTable>)> {
        let (results, built) = async_mpsc::unbounded_channel();
        let mut unwinder = Self {
            by_file: HashMap::new(),
            by_build_id: HashMap::new(),
            rules: HashMap::new(),
            rows_used: 0,
            processes: HashMap::new(),
            builder: Builder::spawn(results)?,
            building: HashMap::new(),
        };
        unwinder.rule_index(maps, INVALID);
        if let Some(row) = maps.unwind_rows(1).first_mut() {
            *row = UnwindRow { pc: 0, rule: 0 };
            unwinder.rows_used = 1;
        }
        Ok((unwinder, built))
    }

    /// A table the builder thread finished: in the kernel's arrays now. Returns the
    /// processes that were waiting for it and for no other, to describe again.
    pub fn built(&mut self, maps: &mut KernelMaps, table: FileTable) -> Vec<u32> {
        let key = table.key;
        let waiting = self.building.remove(&key).unwrap_or_default();
        if !self.by_file.contains_key(&key) {
            self.install(maps, table);
        }
        let still_building: HashSet<u32> = self.building.values().flatten().copied().collect();
        waiting
            .into_iter()
            .filter(|pid| !still_building.contains(pid))
            .collect()
    }

    /// Rows in the kernel's array, and its capacity.
    pub fn rows(&self, maps: &mut KernelMaps) -> (u32, usize) {
        (self.rows_used, maps.unwind_rows_capacity())
    }

    /// The rule of the instruction at `address` (the object's numbering) of the file at
    /// `path`; [`AT_CALL`] when its table does not say.
    pub fn rule_at(&mut self, maps: &mut KernelMaps, path: &Path, address: u64) -> UnwindRule {
        let Ok(file) = File::open(path) else {
            return AT_CALL;
        };
        let Some(located) = self.located(maps, file, path, Wait::Yes, None) else {
            return AT_CALL;
        };
        if located.missing.is_some() {
            return AT_CALL;
        }
        let (first, count) = (located.first_row as usize, located.rows as usize);
        let Some(pc) = address
            .checked_sub(located.base)
            .and_then(|pc| u32::try_from(pc).ok())
        else {
            return AT_CALL;
        };
        let rows = maps.unwind_rows(first + count);
        let Some(rows) = rows.get(first..first + count) else {
            return AT_CALL;
        };
        let rule = match rows.partition_point(|row| row.pc <= pc) {
            0 => return AT_CALL,
            after => rows[after - 1].rule,
        };
        match maps.unwind_rules(rule as usize + 1).get(rule as usize) {
            Some(rule) if rule.kind != CfaKind::Invalid as u8 => *rule,
            _ => AT_CALL,
        }
    }

    /// Reads the executable mappings of process `pid`, tables every file among them not
    /// tabled yet (now, or on the builder thread: `wait`), and tells the kernel. Returns
    /// what it took.
    pub fn describe(
        &mut self,
        maps: &mut KernelMaps,
        pid: u32,
        wait: Wait,
    ) -> Result<Described, UnwindError> {
        let started = Instant::now();
        let mut described = Described::default();
        let rows_before = self.rows_used;
        let files_before = self.by_file.len();
        let process = Process::new(i32::try_from(pid).unwrap_or(i32::MAX))
            .map_err(|source| UnwindError::Maps { pid, source })?;
        let memory_maps = process
            .maps()
            .map_err(|source| UnwindError::Maps { pid, source })?;
        let mut mappings = Vec::new();
        for map in memory_maps {
            if !map.perms.contains(procfs::process::MMPermissions::EXECUTE) {
                continue;
            }
            let (start, end) = map.address;
            let mapping = match &map.pathname {
                MMapPath::Path(path) => {
                    let Some(located) = self.mapped_file(maps, pid, start, end, path, wait) else {
                        described.pending += 1;
                        continue;
                    };
                    if let Some(why) = &located.missing
                        && !described.without_table.iter().any(|(p, _)| p == path)
                    {
                        described.without_table.push((path.clone(), why.clone()));
                    }
                    let Some(base) = located.base_in(start, map.offset) else {
                        continue;
                    };
                    Mapping {
                        start,
                        end,
                        base,
                        first_row: located.first_row,
                        rows: located.rows,
                    }
                }
                MMapPath::Other(name) if name == UPROBES_AREA => Mapping {
                    start,
                    end,
                    base: 0,
                    first_row: TRAMPOLINE_MAPPING,
                    rows: 0,
                },
                // Code no file describes: JIT compilers keep frame pointers in it.
                MMapPath::Anonymous => Mapping {
                    start,
                    end,
                    base: 0,
                    first_row: 0,
                    rows: 0,
                },
                // The vDSO never calls an allocator; [vsyscall] is not code one returns to.
                _ => continue,
            };
            mappings.push(mapping);
        }
        mappings.sort_by_key(|mapping| mapping.start);
        mappings.truncate(MAX_MAPPINGS);
        described.mappings = mappings.len();
        described.new_files = self.by_file.len() - files_before;
        described.new_rows = (self.rows_used - rows_before) as usize;
        self.write(maps, pid, mappings)?;
        described.elapsed = started.elapsed();
        Ok(described)
    }

    /// Tells the kernel that process `pid` maps `mappings`: one write of its entry,
    /// after every row it refers to is in place. A mapping gone since the last write
    /// makes every CPU's cached rules stale.
    fn write(
        &mut self,
        maps: &mut KernelMaps,
        pid: u32,
        mappings: Vec<Mapping>,
    ) -> Result<(), UnwindError> {
        let mut entry = ProcessMappings {
            count: mappings.len() as u32,
            miss_reported: 0,
            mappings: [Mapping::default(); MAX_MAPPINGS],
        };
        entry.mappings[..mappings.len()].copy_from_slice(&mappings);
        let before = self.processes.get(&pid);
        // Nothing new: the kernel's entry stays as it is, with any miss it reported,
        // so an address no mapping has (garbage) is reported once, not on every walk.
        if before == Some(&mappings) {
            return Ok(());
        }
        let gone = before.is_some_and(|before| before.iter().any(|old| !mappings.contains(old)));
        maps.set_unwind_mappings(pid, &entry)?;
        if gone {
            maps.bump_unwind_generation()?;
        }
        self.processes.insert(pid, mappings);
        Ok(())
    }

    /// Whether the kernel was told what process `pid` maps.
    pub fn describes(&self, pid: u32) -> bool {
        self.processes.contains_key(&pid)
    }

    /// Forgets process `pid`, gone; the kernel's entry goes too.
    pub fn forget(&mut self, maps: &mut KernelMaps, pid: u32) -> Result<(), UnwindError> {
        if self.processes.remove(&pid).is_some() {
            maps.remove_unwind_mappings(pid)?;
            maps.bump_unwind_generation()?;
        }
        Ok(())
    }

    /// The table of the file mapped at `start..end` of process `pid`: opened through
    /// `map_files` (which reaches deleted files and other mount namespaces), else
    /// through the process's root.
    fn mapped_file(
        &mut self,
        maps: &mut KernelMaps,
        pid: u32,
        start: u64,
        end: u64,
        path: &Path,
        wait: Wait,
    ) -> Option<Rc<Located>> {
        let through_map_files = format!("/proc/{pid}/map_files/{start:x}-{end:x}");
        let under_root =
            Path::new(&format!("/proc/{pid}/root")).join(path.strip_prefix("/").unwrap_or(path));
        let file = File::open(&through_map_files)
            .or_else(|_| File::open(&under_root))
            .ok()?;
        self.located(maps, file, path, wait, Some(pid))
    }

    /// The table of `file` (named `path` in messages): tabled now if it is new and
    /// `wait` says so, else handed to the builder thread for process `pid` (None then).
    fn located(
        &mut self,
        maps: &mut KernelMaps,
        file: File,
        path: &Path,
        wait: Wait,
        pid: Option<u32>,
    ) -> Option<Rc<Located>> {
        let metadata = file.metadata().ok()?;
        let key = FileKey {
            device: metadata.dev(),
            inode: metadata.ino(),
            size: metadata.size(),
            modified: metadata.mtime(),
        };
        if let Some(located) = self.by_file.get(&key) {
            return Some(Rc::clone(located));
        }
        if wait == Wait::No {
            let waiting = self.building.entry(key).or_default();
            if waiting.is_empty() {
                // A builder gone is a table never built: the mapping stays out.
                let _ = self.builder.requests.send((key, file, path.to_owned()));
            }
            waiting.extend(pid);
            return None;
        }
        Some(self.install(maps, read_table(key, file, path.to_owned())))
    }

    /// Puts a table read into the kernel's arrays, unless one with its build id is there
    /// already (the same object, by another path); records it by file.
    fn install(&mut self, maps: &mut KernelMaps, table: FileTable) -> Rc<Located> {
        if let Some(located) = table
            .build_id
            .as_ref()
            .and_then(|id| self.by_build_id.get(id))
        {
            let located = Rc::clone(located);
            self.by_file.insert(table.key, Rc::clone(&located));
            return located;
        }
        let stored = match table.table {
            Ok(rows) => self.store(maps, &rows, table.segments),
            Err(why) => Err(why),
        };
        let located = Rc::new(stored.unwrap_or_else(|missing| {
            log::debug!("no unwind table for {}: {missing}", table.path.display());
            Located {
                first_row: 0,
                rows: 1,
                base: 0,
                segments: Vec::new(),
                missing: Some(missing),
            }
        }));
        self.by_file.insert(table.key, Rc::clone(&located));
        if let Some(id) = table.build_id {
            self.by_build_id.insert(id, Rc::clone(&located));
        }
        located
    }

    /// Writes `table` into the kernel's arrays, after the rows in use.
    fn store(
        &mut self,
        maps: &mut KernelMaps,
        table: &Table,
        segments: Vec<(u64, u64, u64)>,
    ) -> Result<Located, String> {
        let first = self.rows_used as usize;
        let count = table.rows.len();
        if first + count > maps.unwind_rows_capacity() {
            return Err(format!(
                "its {count} rows do not fit (raise --max-unwind-rows)"
            ));
        }
        let mut rows = Vec::with_capacity(count);
        for &(pc, rule) in &table.rows {
            let Some(index) = self.rule_index(maps, rule) else {
                return Err("the kernel's rule array is full".to_owned());
            };
            rows.push(UnwindRow { pc, rule: index });
        }
        let Some(kernel_rows) = maps
            .unwind_rows(first + count)
            .get_mut(first..first + count)
        else {
            return Err("the kernel's row array cannot be mapped".to_owned());
        };
        kernel_rows.copy_from_slice(&rows);
        self.rows_used += count as u32;
        Ok(Located {
            first_row: first as u32,
            rows: count as u32,
            base: table.base,
            segments,
            missing: None,
        })
    }

    /// The index of `rule` in the kernel's rule array, written there if new.
    fn rule_index(&mut self, maps: &mut KernelMaps, rule: UnwindRule) -> Option<u32> {
        if let Some(&index) = self.rules.get(&rule) {
            return Some(index);
        }
        let index = self.rules.len();
        *maps.unwind_rules(index + 1).get_mut(index)? = rule;
        let index = index as u32;
        self.rules.insert(rule, index);
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// lld puts the text segment at file offset 0x144d0, address 0x154d0: the loader maps
    /// it from offset 0x14000 to an address ending in 0x15000, where the read-only
    /// segment before it has file offset 0x14000 too.
    #[test]
    fn a_mapping_is_placed_by_its_executable_segment() {
        let located = Located {
            first_row: 1,
            rows: 10,
            base: 0x154d0,
            segments: vec![(0x144d0, 0x154d0, 0x40170)],
            missing: None,
        };
        let start = 0x5555_5556_9000;
        let base = located.base_in(start, 0x14000).unwrap();
        // Row address 0 is the segment's first address.
        assert_eq!(base, start + 0x4d0);
        assert_eq!(located.base_in(start, 0x60000), None);
        let missing = Located {
            missing: Some("none".into()),
            ..located
        };
        assert_eq!(missing.base_in(start, 0x14000), Some(start));
    }
}
