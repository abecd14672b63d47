//! The symbolizing thread's work: blazesym's symbolizer and normalizer over a process's
//! addresses, one batch at a time.

use std::{
    cell::RefCell, collections::BTreeMap, fs::File, io::Read, num::NonZeroU32, path::PathBuf,
    sync::Arc, time::Duration,
};

use blazesym::{
    Pid,
    normalize::{Normalizer, UserMeta},
    symbolize::{
        CodeInfo, Input, Symbolized, Symbolizer,
        cache::{self, Cache},
        source::{Elf, Process, Source},
    },
};

use super::{Frame, NamedStacks, Names, StackRequest, debuginfod::Debuginfod};

pub(super) struct Worker {
    symbolizer: Symbolizer,
    /// Every name the frames hold, once.
    names: RefCell<Names>,
    normalizer: Normalizer,
    debuginfod: Option<Debuginfod>,
}

impl Worker {
    pub(super) fn new(debuginfod: Option<Debuginfod>) -> Self {
        Self {
            symbolizer: Symbolizer::builder()
                .enable_inlined_fns(true)
                .enable_code_info(true)
                .enable_demangling(true)
                .build(),
            names: RefCell::default(),
            normalizer: Normalizer::new(),
            debuginfod,
        }
    }

    /// Of `stacks`, those with frames that the debug files fetched since name; each
    /// with all its frames.
    pub(super) fn rename(&self, stacks: NamedStacks, settle: Option<Duration>) -> NamedStacks {
        if let (Some(debuginfod), Some(limit)) = (&self.debuginfod, settle) {
            debuginfod.settle(limit);
        }
        stacks
            .into_iter()
            .filter_map(|(id, mut frames)| {
                self.name_from_debug_files(&mut frames)
                    .then_some((id, frames))
            })
            .collect()
    }

    /// Names the frames that no local file named from the debug files debuginfod has
    /// brought, and asks for those of the others. Returns whether a frame got a name.
    fn name_from_debug_files(&self, frames: &mut Vec<Frame>) -> bool {
        let Some(debuginfod) = &self.debuginfod else {
            return false;
        };
        // By debug file: the indexes of its unnamed frames.
        let mut unnamed: BTreeMap<PathBuf, Vec<usize>> = BTreeMap::new();
        for (index, frame) in frames.iter().enumerate() {
            if frame.function.is_some() || frame.offset.is_none() {
                continue;
            }
            if let Some(file) = frame
                .build_id
                .as_deref()
                .and_then(|id| debuginfod.debug_file(id))
            {
                unnamed.entry(file).or_default().push(index);
            }
        }
        let mut named: BTreeMap<usize, Vec<Frame>> = BTreeMap::new();
        for (file, indexes) in unnamed {
            let offsets: Vec<u64> = indexes
                .iter()
                .filter_map(|&index| frames[index].offset)
                .collect();
            let source = Source::Elf(Elf::new(&file));
            let symbolized = match self
                .symbolizer
                .symbolize(&source, Input::FileOffset(&offsets))
            {
                Ok(symbolized) => symbolized,
                Err(err) => {
                    log::debug!("cannot symbolize with {}: {err}", file.display());
                    continue;
                }
            };
            for (&index, symbolized) in indexes.iter().zip(symbolized) {
                let Some(symbol) = Symbol::of(symbolized, &mut self.names.borrow_mut()) else {
                    continue;
                };
                let frame = &frames[index];
                let location = frame
                    .module
                    .clone()
                    .zip(frame.offset)
                    .map(|(module, offset)| Location {
                        module,
                        offset,
                        build_id: frame.build_id.clone(),
                    });
                named.insert(index, frames_at(frame.address, Some(symbol), location));
            }
        }
        if named.is_empty() {
            return false;
        }
        let old = std::mem::take(frames);
        for (index, frame) in old.into_iter().enumerate() {
            match named.remove(&index) {
                Some(expanded) => frames.extend(expanded),
                None => frames.push(frame),
            }
        }
        true
    }

    pub(super) fn symbolize(&self, pid: NonZeroU32, stacks: Vec<StackRequest>) -> NamedStacks {
        // Refresh the cached memory map while the process is alive (it may have loaded
        // libraries since), so stacks asked for after it exited still resolve. A failure
        // leaves the previous cache in place; an exited process's empty map would replace
        // it, so that is never cached. (An exit between the check and blazesym's read
        // is left: a few microseconds, against the agent's reaction to the exit itself.)
        if has_memory_map(pid) {
            let _ = self
                .symbolizer
                .cache(&Cache::Process(cache::Process::new(Pid::from(pid.get()))));
        }
        // Return addresses point after the call; the call itself is one byte earlier.
        let calls: Vec<u64> = stacks
            .iter()
            .flat_map(|(_, addresses)| addresses.iter().map(|a| a.saturating_sub(1)))
            .collect();
        let symbols = self.symbols(pid, &calls);
        let locations = self.locations(pid, &calls);
        let mut next = symbols.into_iter().zip(locations);
        stacks
            .into_iter()
            .map(|(id, addresses)| {
                let mut frames = addresses
                    .iter()
                    .zip(next.by_ref())
                    .flat_map(|(&address, (symbol, location))| frames_at(address, symbol, location))
                    .collect();
                self.name_from_debug_files(&mut frames);
                (id, frames)
            })
            .collect()
    }

    /// Symbols of `calls`, one per address, None where none was found.
    fn symbols(&self, pid: NonZeroU32, calls: &[u64]) -> Vec<Option<Symbol>> {
        // Through /proc/PID/map_files first: it reaches files inside another mount
        // namespace, and deleted ones. Once the process exited only the paths it had
        // mapped remain, from the cached memory map: what map_files could not name is
        // tried through them.
        let mut symbols = self.symbols_through(pid, calls, true);
        let unnamed: Vec<usize> = (0..calls.len()).filter(|&i| symbols[i].is_none()).collect();
        if !unnamed.is_empty() {
            let retry: Vec<u64> = unnamed.iter().map(|&i| calls[i]).collect();
            let again = self.symbols_through(pid, &retry, false);
            for (index, symbol) in unnamed.into_iter().zip(again) {
                symbols[index] = symbol;
            }
        }
        symbols
    }

    fn symbols_through(
        &self,
        pid: NonZeroU32,
        calls: &[u64],
        map_files: bool,
    ) -> Vec<Option<Symbol>> {
        let mut process = Process::new(Pid::from(pid.get()));
        process.map_files = map_files;
        process.perf_map = false;
        match self
            .symbolizer
            .symbolize(&Source::Process(process.clone()), Input::AbsAddr(calls))
        {
            Ok(symbolized) => {
                let mut names = self.names.borrow_mut();
                symbolized
                    .into_iter()
                    .map(|symbolized| Symbol::of(symbolized, &mut names))
                    .collect()
            }
            // blazesym gives up on the whole batch at the first address it cannot read (an
            // object with broken section headers or DWARF, a name that is not UTF-8): then
            // each address alone, so that costs only its own frames.
            Err(err) => {
                log::debug!("cannot symbolize stacks of pid {pid} together: {err}");
                calls
                    .iter()
                    .map(|&call| self.symbol_alone(&process, call))
                    .collect()
            }
        }
    }

    /// The symbol of one address; from the symbol table alone if its DWARF is unreadable.
    fn symbol_alone(&self, process: &Process, call: u64) -> Option<Symbol> {
        let mut symbol_table_only = process.clone();
        symbol_table_only.debug_syms = false;
        [process.clone(), symbol_table_only]
            .into_iter()
            .find_map(|process| {
                self.symbolizer
                    .symbolize_single(&Source::Process(process), Input::AbsAddr(call))
                    .map_err(|err| log::debug!("cannot symbolize {call:#x}: {err}"))
                    .ok()
                    .and_then(|symbolized| Symbol::of(symbolized, &mut self.names.borrow_mut()))
            })
    }

    /// The module, file offset and build id of each of `calls`, while the process is
    /// alive.
    fn locations(&self, pid: NonZeroU32, calls: &[u64]) -> Vec<Option<Location>> {
        let normalized = self
            .normalizer
            .normalize_user_addrs(Pid::from(pid.get()), calls)
            .ok();
        let trampolines = uprobes_area(pid);
        calls
            .iter()
            .enumerate()
            .map(|(index, &call)| {
                // A return address replaced by a uretprobe's trampoline: another tool's
                // return probe on the allocation function fired before leakbpf's probe,
                // which sits past the function's first instruction, read it.
                // The trampoline is the return address itself, not a call before it.
                let address = call + 1;
                if let Some(area) = trampolines.as_ref().filter(|area| area.contains(&address)) {
                    return Some(Location {
                        module: self.names.borrow_mut().get(UPROBES_AREA),
                        offset: address - area.start,
                        build_id: None,
                    });
                }
                let output = normalized.as_ref()?;
                let &(offset, meta) = output.outputs.get(index)?;
                match output.meta.get(meta) {
                    Some(UserMeta::Elf(elf)) => {
                        let mut names = self.names.borrow_mut();
                        Some(Location {
                            module: names.get(&elf.path.display().to_string()),
                            offset,
                            build_id: elf.build_id.as_deref().map(|id| names.get(&hex_bytes(id))),
                        })
                    }
                    _ => None,
                }
            })
            .collect()
    }
}

/// Whether process `pid` still has its memory mapped: once it released it at its exit
/// (a zombie, or an exiting process), /proc/PID/maps reads as empty, without an error.
fn has_memory_map(pid: NonZeroU32) -> bool {
    let mut first = [0; 1];
    File::open(format!("/proc/{pid}/maps"))
        .and_then(|mut maps| maps.read(&mut first))
        .is_ok_and(|read| read == 1)
}

/// Where an address is in the files a process maps.
struct Location {
    module: Arc<str>,
    offset: u64,
    build_id: Option<Arc<str>>,
}

/// Bytes in lowercase hex, as build ids are written (`file`, `readelf -n`, pprof).
fn hex_bytes(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The name /proc/PID/maps gives the page of uprobe trampolines.
const UPROBES_AREA: &str = "[uprobes]";

/// Where process `pid` has its uprobe trampolines, if it has any.
fn uprobes_area(pid: NonZeroU32) -> Option<std::ops::Range<u64>> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let line = maps.lines().find(|line| line.ends_with(UPROBES_AREA))?;
    let (start, end) = line.split_whitespace().next()?.split_once('-')?;
    Some(u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?)
}

/// A source file and line.
type SourceLocation = (Arc<str>, Option<u32>);

/// Where blazesym says the code is.
fn source_location(info: Option<&CodeInfo<'_>>, names: &mut Names) -> Option<SourceLocation> {
    info.map(|info| (names.get(&info.to_path().display().to_string()), info.line))
}

/// What blazesym said about one address, owned.
#[derive(Clone)]
struct Symbol {
    /// Innermost first: the functions inlined at the address, then the real frame.
    functions: Vec<(Arc<str>, Option<SourceLocation>)>,
    module: Option<Arc<str>>,
    /// The address in the module's own numbering, when no normalized offset is known.
    module_address: u64,
}

impl Symbol {
    fn of(symbolized: Symbolized<'_>, names: &mut Names) -> Option<Self> {
        let Symbolized::Sym(sym) = symbolized else {
            return None;
        };
        let mut functions: Vec<_> = sym
            .inlined
            .iter()
            .rev()
            .map(|inlined| {
                (
                    names.get(&inlined.name),
                    source_location(inlined.code_info.as_ref(), names),
                )
            })
            .collect();
        functions.push((
            names.get(&sym.name),
            source_location(sym.code_info.as_deref(), names),
        ));
        Some(Self {
            functions,
            module: sym.module.map(|m| names.get(&m.to_string_lossy())),
            module_address: sym.addr + sym.offset as u64,
        })
    }
}

fn frames_at(address: u64, symbol: Option<Symbol>, location: Option<Location>) -> Vec<Frame> {
    let Some(symbol) = symbol else {
        return vec![Frame {
            address,
            module: location.as_ref().map(|l| l.module.clone()),
            offset: location.as_ref().map(|l| l.offset),
            build_id: location.and_then(|l| l.build_id),
            ..Frame::default()
        }];
    };
    let (module, offset, build_id) = match location {
        Some(location) => (
            Some(location.module),
            Some(location.offset),
            location.build_id,
        ),
        None => (symbol.module, Some(symbol.module_address), None),
    };
    let last = symbol.functions.len() - 1;
    symbol
        .functions
        .into_iter()
        .enumerate()
        .map(|(index, (function, code))| {
            let (file, line) = code.unzip();
            Frame {
                address,
                function: Some(function),
                module: module.clone(),
                offset,
                build_id: build_id.clone(),
                file,
                line: line.flatten(),
                inlined: index != last,
                allocator: false,
            }
        })
        .collect()
}
