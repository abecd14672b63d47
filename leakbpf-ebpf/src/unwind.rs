//! The unwind tables the agent builds from the objects' `.eh_frame`, and finding the rule
//! for an address of a traced process in them.
//!
//! Each object file has one table, shared by every process that maps it: its rows are a
//! contiguous, sorted slice of [`UNWIND_ROWS`], each row naming a rule of
//! [`UNWIND_RULES`]. A process's executable mappings ([`UNWIND_PROCESSES`]) say which
//! table covers which addresses, and where the table's addresses are in the process.
//! Finding a rule is two bounded binary searches: the mapping, then the row.
//!
//! The walk runs on every allocation and its stacks repeat, so the rules found are kept
//! per CPU by address ([`RULE_CACHE`]): a frame seen before costs one compare. The cache
//! trusts entries of the current [`UNWIND_GENERATION`] only, which changes whenever an
//! address may come to mean other code (an exec, a mapping gone).

use aya_ebpf::{
    bindings::{BPF_F_MMAPABLE, BPF_F_NO_PREALLOC, BPF_NOEXIST},
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use leakbpf_common::{
    CfaKind, EventKind, MAX_MAPPINGS, Mapping, ProcessMappings, RBP_UNCHANGED, TRAMPOLINE_MAPPING,
    UnwindRow, UnwindRule,
};

use crate::{events, stack::Walk};

/// The agent sets the real sizes at load time.
const DEFAULT_ROWS: u32 = 1024;
const MAX_RULES: u32 = 1 << 16;
/// Processes whose mappings are known at once.
const MAX_PROCESSES: u32 = 16384;
/// Rules remembered per CPU, by address, in a direct-mapped table; a power of two.
const CACHED_RULES: usize = 1024;
/// Halvings that find a mapping among [`MAX_MAPPINGS`].
const MAPPING_STEPS: usize = 8;
/// Halvings that find a row among a table's: 2^22 rows, more than any object has.
const ROW_STEPS: usize = 22;

/// A rule the walk makes of a mapping rather than reads from a table: no address of a
/// table has it.
const TRAMPOLINE: u8 = 0xff;

/// The rule of an object without a table, walked by frame pointer.
const FRAME_POINTER: UnwindRule = UnwindRule {
    cfa_offset: 16,
    rbp_offset: -16,
    kind: CfaKind::FramePointer as u8,
    flags: 0,
};

#[map]
static UNWIND_ROWS: Array<UnwindRow> = Array::with_max_entries(DEFAULT_ROWS, BPF_F_MMAPABLE);
#[map]
static UNWIND_RULES: Array<UnwindRule> = Array::with_max_entries(MAX_RULES, BPF_F_MMAPABLE);
/// Allocated per process as it is written: only the traced processes take room.
#[map]
static UNWIND_PROCESSES: HashMap<u32, ProcessMappings> =
    HashMap::with_max_entries(MAX_PROCESSES, BPF_F_NO_PREALLOC);
#[map]
static UNWIND_GENERATION: Array<u32> = Array::with_max_entries(1, 0);
/// What a process the agent has not described yet starts with: nothing, and a miss
/// already reported.
#[map]
static NO_MAPPINGS: Array<ProcessMappings> = Array::with_max_entries(1, 0);
#[map]
static RULE_CACHE: PerCpuArray<[CachedRule; CACHED_RULES]> = PerCpuArray::with_max_entries(1, 0);

#[derive(Clone, Copy)]
struct CachedRule {
    tgid: u32,
    generation: u32,
    pc: u64,
    rule: UnwindRule,
}

/// What an address of the process is, to the walk.
pub enum Found {
    /// Code whose frames unwind by this rule.
    Rule(UnwindRule),
    /// The page of uprobe trampolines: a pending uretprobe replaced the return address.
    Trampoline,
    /// No mapping the walk knows of: new code, or garbage.
    Unknown,
}

/// The generation cached rules must have to be trusted.
#[inline(always)]
pub fn generation() -> u32 {
    UNWIND_GENERATION.get(0).copied().unwrap_or(0)
}

/// What `pc` of the walk's process is: an address inside its code (a return address
/// less one, or the exact address of an interrupted instruction).
#[inline(always)]
pub fn find(walk: &mut Walk, pc: u64) -> Found {
    let Some(cache) = RULE_CACHE.get_ptr_mut(0) else {
        return Found::Unknown;
    };
    let index = ((pc ^ (pc >> 12)) as usize) & (CACHED_RULES - 1);
    // SAFETY: this CPU's cache, used by this program run alone.
    let cached = unsafe { &mut (*cache)[index] };
    if cached.pc == pc && cached.tgid == walk.tgid && cached.generation == walk.generation {
        return decode(cached.rule);
    }
    let Some(rule) = search(walk, pc) else {
        return Found::Unknown;
    };
    *cached = CachedRule {
        tgid: walk.tgid,
        generation: walk.generation,
        pc,
        rule,
    };
    decode(rule)
}

/// The rule of `pc` from the process's mappings and their tables; None when no mapping
/// has it.
#[inline(always)]
fn search(walk: &mut Walk, pc: u64) -> Option<UnwindRule> {
    let mappings = UNWIND_PROCESSES.get_ptr(&walk.tgid)?;
    // SAFETY: a map value, valid for the program's run; the agent replaces values
    // whole, never writes into one.
    let mappings = unsafe { &*mappings };
    let mapping = mapping_of(walk, mappings, pc)?;
    if mapping.first_row == TRAMPOLINE_MAPPING {
        return Some(UnwindRule {
            cfa_offset: 0,
            rbp_offset: RBP_UNCHANGED,
            kind: TRAMPOLINE,
            flags: 0,
        });
    }
    if mapping.rows == 0 {
        return Some(FRAME_POINTER);
    }
    Some(row_rule(walk, mapping, pc))
}

/// Tells the agent, once until it writes the process's mappings again, that the walk
/// met `pc` outside them.
#[inline(always)]
pub fn report_unknown(walk: &Walk, pc: u64) {
    if let Some(mappings) = UNWIND_PROCESSES.get_ptr_mut(&walk.tgid) {
        // SAFETY: a map value, valid for the program's run; a racing walk on another
        // CPU writes the same.
        let reported = unsafe { &mut (*mappings).miss_reported };
        if *reported == 0 {
            *reported = 1;
            events::emit(EventKind::UnwindMiss, walk.tgid, pc, walk.tgid);
        }
        return;
    }
    // A process the agent has not described: a placeholder marks the miss reported,
    // so one event is sent, not one per allocation.
    let Some(empty) = NO_MAPPINGS.get_ptr_mut(0) else {
        return;
    };
    // SAFETY: a map value, valid for the program's run; every writer writes these same
    // values.
    let empty = unsafe {
        (*empty).count = 0;
        (*empty).miss_reported = 1;
        &*empty
    };
    if UNWIND_PROCESSES
        .insert(&walk.tgid, empty, u64::from(BPF_NOEXIST))
        .is_ok()
    {
        events::emit(EventKind::UnwindMiss, walk.tgid, pc, walk.tgid);
    }
}

#[inline(always)]
fn decode(rule: UnwindRule) -> Found {
    if rule.kind == TRAMPOLINE {
        Found::Trampoline
    } else {
        Found::Rule(rule)
    }
}

/// The mapping that has `pc`, by binary search over the sorted mappings.
#[inline(always)]
fn mapping_of<'a>(walk: &mut Walk, mappings: &'a ProcessMappings, pc: u64) -> Option<&'a Mapping> {
    let count = mappings.count as usize;
    if count > MAX_MAPPINGS {
        return None;
    }
    // The first mapping that starts after `pc`: the one before it may hold it.
    let (mut low, mut high) = (0usize, count);
    for _ in 0..MAPPING_STEPS {
        if low >= high {
            break;
        }
        let middle = walk.opaque(((low + high) / 2) as u64) as usize;
        let starts_after = mappings.mappings.get(middle)?.start > pc;
        if starts_after {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    let last = walk.opaque(low as u64) as usize;
    let mapping = mappings.mappings.get(last.checked_sub(1)?)?;
    (pc < mapping.end).then_some(mapping)
}

/// The rule of the row of `mapping`'s table that covers `pc`; [`CfaKind::Invalid`] when
/// none does.
#[inline(always)]
fn row_rule(walk: &mut Walk, mapping: &Mapping, pc: u64) -> UnwindRule {
    const INVALID: UnwindRule = UnwindRule {
        cfa_offset: 0,
        rbp_offset: RBP_UNCHANGED,
        kind: CfaKind::Invalid as u8,
        flags: 0,
    };
    let Some(offset) = pc.checked_sub(mapping.base) else {
        return INVALID;
    };
    if offset > u64::from(u32::MAX) {
        return INVALID;
    }
    let offset = offset as u32;
    // The first row that starts after `offset`: the one before it covers it.
    let first = mapping.first_row;
    let (mut low, mut high) = (first, first.saturating_add(mapping.rows));
    for _ in 0..ROW_STEPS {
        if low >= high {
            break;
        }
        let middle = walk.opaque(u64::from(low + (high - low) / 2)) as u32;
        let Some(row) = UNWIND_ROWS.get(middle) else {
            return INVALID;
        };
        if row.pc > offset {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    if low == first {
        return INVALID;
    }
    match UNWIND_ROWS.get(low - 1) {
        Some(row) => UNWIND_RULES.get(row.rule).copied().unwrap_or(INVALID),
        None => INVALID,
    }
}

/// A new process of `parent` (a fork) maps what its parent maps.
#[inline(always)]
pub fn inherit(parent: u32, child: u32) {
    if let Some(mappings) = UNWIND_PROCESSES.get_ptr(&parent) {
        // SAFETY: a map value, valid for the program's run.
        let _ = UNWIND_PROCESSES.insert(&child, unsafe { &*mappings }, 0);
    }
}

/// Process `tgid` left its mappings behind (it called exec, or exited): their rules,
/// cached by address, may be wrong for what it maps next.
#[inline(always)]
pub fn forget(tgid: u32) {
    if UNWIND_PROCESSES.remove(&tgid).is_ok()
        && let Some(generation) = UNWIND_GENERATION.get_ptr_mut(0)
    {
        // SAFETY: one u32 of an array map; racing bumps may lose one, which still
        // changes the generation.
        unsafe { *generation = (*generation).wrapping_add(1) };
    }
}
