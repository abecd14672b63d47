//! One object file's unwind table, from its call frame information (`.eh_frame`, else
//! `.debug_frame`) read with gimli: for every address range, how a frame there finds its
//! caller's, in the compact rules the eBPF walk applies. `.eh_frame` is found as the
//! process's own unwinder finds it, through the `PT_GNU_EH_FRAME` program header, when
//! the section headers (which nothing at run time needs) do not name it.
//!
//! Every row of every FDE is evaluated here, once per file, so the walk never runs a
//! CFA program: it only looks up the row of an address. Rules beyond what the walk can
//! do (a CFA in another register, an unknown expression) become [`CfaKind::Invalid`]
//! rows: the walk stops there rather than guess. So does an object whose call frame
//! information does not parse: a table that cannot be trusted is no table.

use std::ops::Range;

use gimli::{
    BaseAddresses, CfaRule, CieOrFde, DebugFrame, EhFrame, EhFrameHdr, EndianSlice, LittleEndian,
    Pointer, Reader, RegisterRule, UnwindContext, UnwindSection, UnwindTableRow, X86_64,
};
use leakbpf_common::{CfaKind, RBP_LOST, RBP_UNCHANGED, RULE_SKIP, UnwindRule};
use object::{
    Endianness, Object, ObjectSection,
    elf::{ELF_NOTE_GNU, FileHeader64, NT_GNU_BUILD_ID, PF_X, PT_GNU_EH_FRAME, PT_LOAD, PT_NOTE},
    read::elf::{FileHeader, ProgramHeader},
};

type Slice<'a> = EndianSlice<'a, LittleEndian>;

/// `offsetof(struct ucontext, uc_mcontext)` on x86_64: where a signal frame's saved
/// registers start, from the stack pointer at the signal trampoline.
const SIGCONTEXT_OFFSET: i32 = 40;

/// The rule of addresses no call frame information covers.
pub const INVALID: UnwindRule = UnwindRule {
    cfa_offset: 0,
    rbp_offset: RBP_UNCHANGED,
    kind: CfaKind::Invalid as u8,
    flags: 0,
};

/// An object's unwind table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// The address (in the object's own numbering) that row address 0 stands for.
    pub base: u64,
    /// Sorted by address, no two neighbours alike; each row holds up to the next.
    pub rows: Vec<(u32, UnwindRule)>,
}

/// What an object's call frame information turned out to be.
#[derive(Debug)]
pub enum Built {
    Table(Table),
    /// It has none: no entry in `.eh_frame` or `.debug_frame`.
    Missing,
    /// It has some that does not parse.
    Corrupt(gimli::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("{0} is not an ELF object leakbpf can read")]
pub struct NotElf(#[source] object::read::Error);

/// What the program headers say of an ELF object: what a process maps of it, and its
/// build id. Section headers are not needed, nor read.
#[derive(Debug)]
pub struct Loadable {
    /// Its executable loadable segments: (file offset, address, size in the file).
    pub segments: Vec<(u64, u64, u64)>,
    pub build_id: Option<Vec<u8>>,
}

/// The program headers of the ELF object `data`.
pub fn loadable(data: &[u8]) -> Result<Loadable, NotElf> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(NotElf)?;
    let endian = header.endian().map_err(NotElf)?;
    let headers = header.program_headers(endian, data).map_err(NotElf)?;
    let segments = headers
        .iter()
        .filter(|header| header.p_type(endian) == PT_LOAD && header.p_flags(endian) & PF_X != 0)
        .map(|header| {
            (
                header.p_offset(endian),
                header.p_vaddr(endian),
                header.p_filesz(endian),
            )
        })
        .collect();
    let mut build_id = None;
    for header in headers
        .iter()
        .filter(|header| header.p_type(endian) == PT_NOTE)
    {
        let Ok(Some(mut notes)) = header.notes(endian, data) else {
            continue;
        };
        while let Ok(Some(note)) = notes.next() {
            if note.name() == ELF_NOTE_GNU && note.n_type(endian) == NT_GNU_BUILD_ID {
                build_id = Some(note.desc().to_vec());
            }
        }
    }
    Ok(Loadable { segments, build_id })
}

/// The table of the ELF object `data`. Frames inside `wrappers` (address ranges of
/// allocation wrappers) get [`RULE_SKIP`].
pub fn build(data: &[u8], wrappers: &[Range<u64>]) -> Result<Built, NotElf> {
    // Without readable section headers, only what the program headers reach.
    let file = object::File::parse(data).ok();
    let mut bases = BaseAddresses::default();
    for (name, set) in [
        (
            ".text",
            BaseAddresses::set_text as fn(BaseAddresses, u64) -> BaseAddresses,
        ),
        (".got", BaseAddresses::set_got),
        (".eh_frame_hdr", BaseAddresses::set_eh_frame_hdr),
    ] {
        if let Some(section) = file.as_ref().and_then(|file| file.section_by_name(name)) {
            bases = set(bases, section.address());
        }
    }
    let section = |name| {
        file.as_ref()?
            .section_by_name(name)
            .and_then(|section| Some((section.address(), section.data().ok()?)))
            .filter(|(_, data)| !data.is_empty())
    };
    let eh_frame = match section(".eh_frame") {
        Some(found) => Some(found),
        None => eh_frame_of_segments(data)?,
    };
    let from_eh_frame = eh_frame.map(|(address, data)| {
        let bases = bases.clone().set_eh_frame(address);
        rows_of(&EhFrame::new(data, LittleEndian), &bases)
    });
    // Code built without unwind tables may still have debuggers' call frame information
    // (gcc -g -fno-asynchronous-unwind-tables): an `.eh_frame` with no entry (only the
    // terminator crtend adds) is none.
    let rows = match from_eh_frame {
        Some(Ok(rows)) if rows.is_empty() => None,
        rows => rows,
    }
    .or_else(|| {
        let (_, data) = section(".debug_frame")?;
        let mut debug_frame = DebugFrame::new(data, LittleEndian);
        debug_frame.set_address_size(8);
        Some(rows_of(&debug_frame, &bases))
    });
    match rows {
        Some(Ok(rows)) if rows.is_empty() => Ok(Built::Missing),
        Some(Ok(rows)) => Ok(Built::Table(assemble(rows, wrappers))),
        Some(Err(err)) => Ok(Built::Corrupt(err)),
        None => Ok(Built::Missing),
    }
}

/// `.eh_frame`'s address and bytes, through the program headers: `PT_GNU_EH_FRAME` is
/// `.eh_frame_hdr`, which points at `.eh_frame`; the section runs to its terminator,
/// within the loadable segment that holds it.
fn eh_frame_of_segments(data: &[u8]) -> Result<Option<(u64, &[u8])>, NotElf> {
    let header = FileHeader64::<Endianness>::parse(data).map_err(NotElf)?;
    let endian = header.endian().map_err(NotElf)?;
    let headers = header.program_headers(endian, data).map_err(NotElf)?;
    let Some(hdr) = headers
        .iter()
        .find(|header| header.p_type(endian) == PT_GNU_EH_FRAME)
    else {
        return Ok(None);
    };
    let Ok(hdr_data) = hdr.data(endian, data) else {
        return Ok(None);
    };
    let bases = BaseAddresses::default().set_eh_frame_hdr(hdr.p_vaddr(endian));
    let Ok(parsed) = EhFrameHdr::new(hdr_data, LittleEndian).parse(&bases, 8) else {
        return Ok(None);
    };
    let Pointer::Direct(address) = parsed.eh_frame_ptr() else {
        return Ok(None);
    };
    let found = headers.iter().find_map(|segment| {
        let start = segment.p_vaddr(endian);
        if segment.p_type(endian) != PT_LOAD
            || address < start
            || address >= start.checked_add(segment.p_filesz(endian))?
        {
            return None;
        }
        let segment_data = segment.data(endian, data).ok()?;
        Some((
            address,
            segment_data.get(usize::try_from(address - start).ok()?..)?,
        ))
    });
    Ok(found)
}

/// A row as evaluated: its address range and rule.
type Span = (u64, u64, UnwindRule);

/// Every row of every FDE of `section`.
fn rows_of<'a, S>(section: &S, bases: &BaseAddresses) -> gimli::Result<Vec<Span>>
where
    S: UnwindSection<Slice<'a>>,
{
    let mut context = UnwindContext::new();
    let mut spans = Vec::new();
    let mut entries = section.entries(bases);
    while let Some(entry) = entries.next()? {
        let CieOrFde::Fde(partial) = entry else {
            continue;
        };
        let fde = partial.parse(S::cie_from_offset)?;
        let signal = fde.cie().is_signal_trampoline();
        let mut table = fde.rows(section, bases, &mut context)?;
        while let Some(row) = table.next_row()? {
            if row.start_address() >= row.end_address() {
                continue;
            }
            let rule = if signal {
                UnwindRule {
                    cfa_offset: SIGCONTEXT_OFFSET,
                    rbp_offset: RBP_UNCHANGED,
                    kind: CfaKind::Signal as u8,
                    flags: 0,
                }
            } else {
                rule_of(row, section)
            };
            spans.push((row.start_address(), row.end_address(), rule));
        }
    }
    Ok(spans)
}

/// The walk's rule for one evaluated row.
fn rule_of<'a, S>(row: &UnwindTableRow<usize>, section: &S) -> UnwindRule
where
    S: UnwindSection<Slice<'a>>,
{
    match row.register(X86_64::RA) {
        Some(RegisterRule::Offset(-8)) => {}
        Some(RegisterRule::Undefined) => {
            return UnwindRule {
                kind: CfaKind::Outermost as u8,
                ..INVALID
            };
        }
        _ => return INVALID,
    }
    let (kind, cfa_offset) = match *row.cfa() {
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => {
            (CfaKind::Rsp, offset)
        }
        CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RBP => {
            (CfaKind::Rbp, offset)
        }
        CfaRule::RegisterAndOffset { .. } => return INVALID,
        CfaRule::Expression(expression) => match expression.get(section) {
            Ok(expression) => match cfa_expression(expression.0) {
                Some(rule) => rule,
                None => return INVALID,
            },
            Err(_) => return INVALID,
        },
    };
    // A frame holds at least its return address: the CFA is above the register.
    let minimum = match kind {
        CfaKind::Rsp => 8,
        CfaKind::Rbp => 16,
        _ => 0,
    };
    let Ok(cfa_offset) = i32::try_from(cfa_offset) else {
        return INVALID;
    };
    if cfa_offset < minimum {
        return INVALID;
    }
    let rbp_offset = match row.register(X86_64::RBP) {
        None | Some(RegisterRule::SameValue) => RBP_UNCHANGED,
        // Below the return address, inside the frame.
        Some(RegisterRule::Offset(offset)) if offset <= -16 => {
            i16::try_from(offset).unwrap_or(RBP_LOST)
        }
        Some(_) => RBP_LOST,
    };
    UnwindRule {
        cfa_offset,
        rbp_offset,
        kind: kind as u8,
        flags: 0,
    }
}

/// The walk's reading of a CFA expression, for the two that real code has: PLT stubs'
/// (rsp + 8, plus 8 past the stub's push) and realigned frames' (the word at rbp +
/// offset).
fn cfa_expression(mut expression: Slice<'_>) -> Option<(CfaKind, i64)> {
    const DW_OP_BREG6: u8 = 0x76;
    const DW_OP_DEREF: u8 = 0x06;
    // DW_OP_breg7 8; DW_OP_breg16 0; DW_OP_lit15; DW_OP_and; DW_OP_lit<N>; DW_OP_ge;
    // DW_OP_lit3; DW_OP_shl; DW_OP_plus, with N where the stub's push ends.
    const PLT_HEAD: [u8; 6] = [0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a];
    const PLT_TAIL: [u8; 4] = [0x2a, 0x33, 0x24, 0x22];
    let bytes = expression.slice();
    if bytes.len() == PLT_HEAD.len() + 1 + PLT_TAIL.len()
        && bytes.starts_with(&PLT_HEAD)
        && bytes.ends_with(&PLT_TAIL)
    {
        let literal = bytes[PLT_HEAD.len()];
        // DW_OP_lit0 is 0x30.
        return (0x30..0x50)
            .contains(&literal)
            .then(|| (CfaKind::Plt, i64::from(literal - 0x30)));
    }
    if expression.read_u8().ok()? != DW_OP_BREG6 {
        return None;
    }
    let offset = expression.read_sleb128().ok()?;
    (expression.read_u8().ok()? == DW_OP_DEREF && expression.is_empty())
        .then_some((CfaKind::RbpDeref, offset))
}

/// The table from every row: sorted, rows no FDE covers made invalid, the wrappers'
/// rows marked, neighbours alike merged.
fn assemble(mut spans: Vec<Span>, wrappers: &[Range<u64>]) -> Table {
    spans.sort_by_key(|&(start, _, _)| start);
    let base = spans.first().map_or(0, |&(start, _, _)| start);
    let mut rows: Vec<(u32, UnwindRule)> = Vec::with_capacity(spans.len());
    let mut covered_to = base;
    for (start, end, mut rule) in spans {
        if start > covered_to {
            push(&mut rows, base, covered_to, INVALID);
        }
        let in_wrapper = wrappers.iter().any(|wrapper| wrapper.contains(&start));
        if in_wrapper {
            rule.flags |= RULE_SKIP;
        }
        push(&mut rows, base, start, rule);
        covered_to = covered_to.max(end);
        // A wrapper's rows end with it: what follows is not skipped.
        if in_wrapper {
            push(&mut rows, base, end, INVALID);
        }
    }
    push(&mut rows, base, covered_to, INVALID);
    Table { base, rows }
}

/// Appends the row at `address`: a row at the same address is replaced, one alike its
/// predecessor is not needed.
fn push(rows: &mut Vec<(u32, UnwindRule)>, base: u64, address: u64, rule: UnwindRule) {
    // Addresses 4 GiB past the first cannot be rows: they have no rule.
    let Ok(pc) = u32::try_from(address - base) else {
        return;
    };
    if rows.last().is_some_and(|&(last, _)| last == pc) {
        rows.pop();
    }
    if rows.last().is_none_or(|&(_, last)| last != rule) {
        rows.push((pc, rule));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Table {
        /// The rule at `address`, in the object's numbering.
        fn rule_at(&self, address: u64) -> UnwindRule {
            let Some(pc) = address
                .checked_sub(self.base)
                .and_then(|pc| u32::try_from(pc).ok())
            else {
                return INVALID;
            };
            match self.rows.partition_point(|&(start, _)| start <= pc) {
                0 => INVALID,
                after => self.rows[after - 1].1,
            }
        }
    }

    fn rsp(offset: i32) -> UnwindRule {
        UnwindRule {
            cfa_offset: offset,
            rbp_offset: RBP_UNCHANGED,
            kind: CfaKind::Rsp as u8,
            flags: 0,
        }
    }

    #[test]
    fn gaps_are_invalid_and_alike_neighbours_merge() {
        let spans = vec![
            (0x1010, 0x1014, rsp(16)),
            (0x1000, 0x1001, rsp(8)),
            (0x1001, 0x1010, rsp(16)),
            (0x1020, 0x1030, rsp(8)),
        ];
        let table = assemble(spans, &[]);
        assert_eq!(table.base, 0x1000);
        assert_eq!(
            table.rows,
            [
                (0, rsp(8)),
                (1, rsp(16)),
                (0x14, INVALID),
                (0x20, rsp(8)),
                (0x30, INVALID)
            ]
        );
        assert_eq!(table.rule_at(0x0fff), INVALID);
        assert_eq!(table.rule_at(0x1000), rsp(8));
        assert_eq!(table.rule_at(0x1013), rsp(16));
        assert_eq!(table.rule_at(0x1018), INVALID);
        assert_eq!(table.rule_at(0x102f), rsp(8));
        assert_eq!(table.rule_at(0x1030), INVALID);
    }

    #[test]
    fn a_wrapper_s_rows_are_skipped_and_end_with_it() {
        let spans = vec![
            (0x2000, 0x2004, rsp(8)),
            (0x2004, 0x2010, rsp(16)),
            (0x2010, 0x2020, rsp(8)),
        ];
        let wrappers = vec![0x2000..0x2010, 0x3000..0x3010];
        let table = assemble(spans, &wrappers);
        let skipped = |rule: UnwindRule| UnwindRule {
            flags: RULE_SKIP,
            ..rule
        };
        assert_eq!(
            table.rows,
            [
                (0, skipped(rsp(8))),
                (4, skipped(rsp(16))),
                (0x10, rsp(8)),
                (0x20, INVALID)
            ]
        );
    }

    #[test]
    fn plt_and_realigned_frame_expressions_are_recognised() {
        let plt = [
            0x77, 0x08, 0x80, 0x00, 0x3f, 0x1a, 0x3b, 0x2a, 0x33, 0x24, 0x22,
        ];
        assert_eq!(
            cfa_expression(EndianSlice::new(&plt, LittleEndian)),
            Some((CfaKind::Plt, 11))
        );
        // DW_OP_breg6 -8; DW_OP_deref
        let realigned = [0x76, 0x78, 0x06];
        assert_eq!(
            cfa_expression(EndianSlice::new(&realigned, LittleEndian)),
            Some((CfaKind::RbpDeref, -8))
        );
        // DW_OP_breg7 160; DW_OP_deref: not one the walk does.
        let other = [0x77, 0xa0, 0x01, 0x06];
        assert_eq!(cfa_expression(EndianSlice::new(&other, LittleEndian)), None);
    }

    /// This test binary's libc: its table covers `malloc`, whose first instruction's
    /// frame is the return address alone, and `_start`-like outermost frames exist.
    #[test]
    fn libc_has_a_table_that_covers_malloc() {
        let libc = crate::attach::elf::own_libc();
        let data = std::fs::read(&libc).unwrap();
        let Built::Table(table) = build(&data, &[]).unwrap() else {
            panic!("libc has .eh_frame");
        };
        assert!(table.rows.len() > 1000, "{} rows", table.rows.len());
        let elf = crate::attach::elf::ElfObject::from_bytes(libc, data);
        let malloc = &elf.functions(&["malloc"]).unwrap()["malloc"];
        assert_eq!(table.rule_at(malloc.address), rsp(8));
        assert!(
            table
                .rows
                .iter()
                .any(|(_, rule)| rule.kind == CfaKind::Outermost as u8),
            "clone3's child frame has an undefined return address"
        );
        assert!(
            table
                .rows
                .iter()
                .any(|(_, rule)| rule.kind == CfaKind::Signal as u8),
            "__restore_rt is a signal frame"
        );
    }

    /// libc's `.eh_frame` is where its section header says, and its program headers
    /// find it too (as they do in an object whose section headers are broken).
    #[test]
    fn eh_frame_is_found_through_the_program_headers_too() {
        let data = std::fs::read("/usr/lib/x86_64-linux-gnu/libc.so.6").unwrap();
        let file = object::File::parse(&*data).unwrap();
        let section = file.section_by_name(".eh_frame").unwrap();
        let (address, bytes) = eh_frame_of_segments(&data).unwrap().unwrap();
        assert_eq!(address, section.address());
        let section = section.data().unwrap();
        assert!(bytes.len() >= section.len());
        assert_eq!(&bytes[..section.len()], section);
    }

    #[test]
    fn an_object_without_call_frame_information_has_no_table() {
        // The ELF header of an object with no sections at all.
        let mut elf = b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0".to_vec();
        elf.extend_from_slice(&3u16.to_le_bytes());
        elf.extend_from_slice(&62u16.to_le_bytes());
        elf.extend_from_slice(&1u32.to_le_bytes());
        elf.extend_from_slice(&[0; 24]);
        elf.extend_from_slice(&0u32.to_le_bytes());
        for half in [64u16, 56, 0, 64, 0, 0] {
            elf.extend_from_slice(&half.to_le_bytes());
        }
        assert!(matches!(build(&elf, &[]).unwrap(), Built::Missing));
        assert!(build(b"not an ELF file", &[]).is_err());
    }
}
