//! Chooses the instruction of a function that its uprobe goes on.
//!
//! The kernel runs a uprobe's program from a breakpoint, then has to execute the original
//! instruction. `push`, `nop`, `jmp`, `call` and `jcc` it emulates; anything else it
//! single-steps out of line, which costs about 15 times more here (0.55 µs against
//! 9.7 µs). glibc's `free` opens with `test %rdi,%rdi`: a probe there pays the single
//! step on every free, one nine bytes further is on a `push`.
//!
//! A probe may move from offset 0 to a later instruction only if every call reaches that
//! instruction with what the programs read still as it was at entry: the argument
//! registers the function's program reads (`malloc`'s size, `free`'s pointer; the others
//! may be overwritten), the stack pointer (the return address at `[rsp]`, which a
//! uretprobe also replaces) and the frame pointer (the start of the stack walk). So the
//! probe moves past instructions that do not branch, write memory, or write any of those
//! registers, up to the first one the kernel emulates; where none is found it stays at
//! offset 0. For `free` a leading NULL test may be skipped too: freeing NULL does nothing
//! to record. jemalloc's `free` computes its fast path in `rax`, `rcx` and `rdx` for ten
//! instructions, with its pointer in `rdi`, before its first branch: that branch is its
//! probe.

use iced_x86::{
    Code, Decoder, DecoderOptions, FlowControl, Instruction, InstructionInfoFactory, Mnemonic,
    OpAccess, OpKind, Register,
};

/// What the probe on a function needs of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Reads the first `n` arguments and walks the stack; may carry a uretprobe.
    Entry(usize),
    /// Reads the first argument, a pointer to free; NULL needs no probe.
    Free,
}

/// The System V argument registers, in order.
const ARGUMENTS: [Register; 4] = [Register::RDI, Register::RSI, Register::RDX, Register::RCX];

/// What a free's program reads: the pointer, and the stack and frame pointers.
const FREE_READS: [Register; 3] = [Register::RDI, Register::RSP, Register::RBP];

/// How far into a prologue to look: the instructions that matter come first.
const MAX_INSTRUCTIONS: usize = 16;

/// Where a function's probe goes: its offset from the function's start, and for each of
/// the first three arguments the register it is in there (an index into `rdi`, `rsi`,
/// `rdx`, `rcx`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    pub offset: u64,
    pub registers: [u8; 3],
}

impl Placement {
    /// The function's first instruction, every argument where the call put it.
    const ENTRY: Placement = Placement {
        offset: 0,
        registers: [0, 1, 2],
    };

    fn at(offset: u64) -> Self {
        Self {
            offset,
            ..Self::ENTRY
        }
    }
}

/// An argument register of [`Placement::registers`], named as the ABI names it.
pub fn register_name(register: u8) -> &'static str {
    ["rdi", "rsi", "rdx", "rcx"][usize::from(register & 3)]
}

/// Where the probe of a function whose code starts with `prologue` goes.
///
/// # Examples
///
/// ```
/// use leakbpf::attach::placement::{Role, probe_offset};
/// // test %rdi,%rdi; je +0xbf; push %rbp
/// let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
/// assert_eq!(probe_offset(&free, Role::Free).offset, 9);
/// ```
pub fn probe_offset(prologue: &[u8], role: Role) -> Placement {
    let mut decoder = Decoder::with_ip(64, prologue, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut after_null_test = false;
    // The NULL test's branch, itself emulated: the probe's place if none is found past it.
    let mut null_branch = None;
    // Entry probes: the registers holding each argument read, as moves copy them.
    let mut homes: Vec<Vec<Register>> = match role {
        Role::Entry(n) => ARGUMENTS.iter().take(n).map(|&r| vec![r]).collect(),
        Role::Free => Vec::new(),
    };
    for _ in 0..MAX_INSTRUCTIONS {
        if !decoder.can_decode() {
            break;
        }
        let instruction = decoder.decode();
        if instruction.is_invalid() {
            break;
        }
        let null_test = std::mem::take(&mut after_null_test);
        if role == Role::Free && null_test && jumps_if_zero(&instruction) {
            // Only a NULL pointer takes the branch; the rest fall through to what follows.
            null_branch = Some(instruction.ip());
            continue;
        }
        if is_emulated(&instruction) {
            return match role {
                Role::Free => Some(Placement::at(instruction.ip())),
                Role::Entry(_) => chosen(&homes).map(|registers| Placement {
                    offset: instruction.ip(),
                    registers,
                }),
            }
            .unwrap_or(Placement::ENTRY);
        }
        let kept = match role {
            Role::Free => leaves_entry_state(&instruction, &mut info),
            Role::Entry(_) => follow_arguments(&instruction, &mut info, &mut homes),
        };
        if !kept {
            break;
        }
        after_null_test = is_test_of_rdi(&instruction);
    }
    null_branch.map_or(Placement::ENTRY, Placement::at)
}

/// The register of each argument in `homes` the program can read (one of the four
/// argument registers, its own first), the others where the call put them; None if an
/// argument is in none of them.
fn chosen(homes: &[Vec<Register>]) -> Option<[u8; 3]> {
    let mut registers = Placement::ENTRY.registers;
    for (index, home) in homes.iter().enumerate().take(registers.len()) {
        let own = ARGUMENTS[index];
        let register = if home.contains(&own) {
            own
        } else {
            *home.iter().find(|r| ARGUMENTS.contains(r))?
        };
        let position = ARGUMENTS.iter().position(|&r| r == register)?;
        registers[index] = u8::try_from(position).ok()?;
    }
    Some(registers)
}

/// Runs `instruction` over where the arguments are: a 64-bit register move copies one, a
/// write loses it. False when the probe cannot move past it: it branches, writes memory,
/// the stack or frame pointer, or leaves an argument in no register.
fn follow_arguments(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    homes: &mut [Vec<Register>],
) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    if info.used_memory().iter().any(|m| writes(m.access())) {
        return false;
    }
    let written: Vec<Register> = info
        .used_registers()
        .iter()
        .filter(|r| writes(r.access()))
        .map(|r| r.register().full_register())
        .collect();
    if written
        .iter()
        .any(|r| matches!(r, Register::RSP | Register::RBP))
    {
        return false;
    }
    let copied = (instruction.code() == Code::Mov_rm64_r64
        || instruction.code() == Code::Mov_r64_rm64)
        && instruction.op0_kind() == OpKind::Register
        && instruction.op1_kind() == OpKind::Register;
    for home in homes.iter_mut() {
        let copy = copied && home.contains(&instruction.op1_register());
        home.retain(|r| !written.contains(r));
        if copy {
            home.push(instruction.op0_register());
        }
    }
    homes.iter().all(|home| !home.is_empty())
}

fn writes(access: OpAccess) -> bool {
    matches!(
        access,
        OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
    )
}

/// Whether the kernel emulates `instruction` instead of single-stepping it.
pub fn is_emulated(instruction: &Instruction) -> bool {
    match instruction.mnemonic() {
        Mnemonic::Push => instruction.op0_kind() == OpKind::Register,
        Mnemonic::Nop => true,
        _ => {
            matches!(
                instruction.flow_control(),
                FlowControl::UnconditionalBranch
                    | FlowControl::ConditionalBranch
                    | FlowControl::Call
            ) && instruction.op0_kind() == OpKind::NearBranch64
        }
    }
}

/// True when running `instruction` keeps what a free's program reads and all memory as
/// they were, and goes on to the next instruction.
fn leaves_entry_state(instruction: &Instruction, info: &mut InstructionInfoFactory) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes_memory = info.used_memory().iter().any(|m| writes(m.access()));
    let writes_watched = info
        .used_registers()
        .iter()
        .any(|r| writes(r.access()) && FREE_READS.contains(&r.register().full_register()));
    !writes_memory && !writes_watched
}

fn is_test_of_rdi(instruction: &Instruction) -> bool {
    instruction.code() == Code::Test_rm64_r64
        && instruction.op0_kind() == OpKind::Register
        && instruction.op0_register() == Register::RDI
        && instruction.op1_register() == Register::RDI
}

fn jumps_if_zero(instruction: &Instruction) -> bool {
    matches!(instruction.code(), Code::Je_rel8_64 | Code::Je_rel32_64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attach::elf::ElfObject;

    // Hand-assembled prologues; comments give the AT&T source.

    /// glibc 2.36 `free`: test %rdi,%rdi; je; push %rbp
    const FREE: &[u8] = &[0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
    /// glibc 2.36 `malloc`: push %r12; push %rbp; push %rbx
    const MALLOC: &[u8] = &[0x41, 0x54, 0x55, 0x53];
    /// glibc 2.36 `posix_memalign`: cmpb $0x0,0x140201(%rip); push %r12
    const POSIX_MEMALIGN: &[u8] = &[0x80, 0x3d, 0x01, 0x02, 0x14, 0x00, 0x00, 0x41, 0x54];

    #[test]
    fn free_skips_its_null_test_to_the_first_push() {
        assert_eq!(probe_offset(FREE, Role::Free).offset, 9);
    }

    #[test]
    fn an_entry_probe_never_skips_a_branch() {
        // Without the NULL exemption the `je` itself is the first emulated instruction.
        assert_eq!(probe_offset(FREE, Role::Entry(1)).offset, 3);
    }

    #[test]
    fn an_emulated_first_instruction_keeps_offset_zero() {
        assert_eq!(probe_offset(MALLOC, Role::Entry(1)).offset, 0);
    }

    #[test]
    fn a_compare_with_memory_is_skipped() {
        assert_eq!(probe_offset(POSIX_MEMALIGN, Role::Entry(3)).offset, 7);
    }

    #[test]
    fn stays_at_zero_when_an_argument_register_read_is_written() {
        // mov %rsi,%rax; mul %rdx (writes rdx); push %rbx
        let reallocarray = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x53];
        assert_eq!(probe_offset(&reallocarray, Role::Entry(3)).offset, 0);
        // mov %rax,%rdi; push %rbx
        assert_eq!(
            probe_offset(&[0x48, 0x89, 0xc7, 0x53], Role::Entry(1)).offset,
            0
        );
    }

    #[test]
    fn an_argument_register_no_program_reads_may_be_written() {
        // mov %rsi,%rax; mul %rdx (writes rdx); push %rbx: malloc reads rdi alone.
        let code = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x53];
        assert_eq!(probe_offset(&code, Role::Entry(1)).offset, 6);
    }

    /// Debian 12's libmimalloc2.0 `malloc`: its size moves to rsi before the first branch.
    const MIMALLOC_MALLOC: &[u8] = &[
        0x48, 0x8b, 0x05, 0x49, 0xb4, 0x00, 0x00, // mov 0xb449(%rip),%rax
        0x48, 0x89, 0xfe, // mov %rdi,%rsi
        0x64, 0x48, 0x8b, 0x38, // mov %fs:(%rax),%rdi
        0x48, 0x81, 0xfe, 0x00, 0x04, 0x00, 0x00, // cmp $0x400,%rsi
        0x77, 0x29, // ja
    ];

    #[test]
    fn mimalloc_malloc_is_probed_at_its_branch_with_the_size_in_rsi() {
        let placement = probe_offset(MIMALLOC_MALLOC, Role::Entry(1));
        assert_eq!(placement.offset, 0x15);
        assert_eq!(register_name(placement.registers[0]), "rsi");
        // An allocation that also reads rsi's own argument cannot move there.
        assert_eq!(probe_offset(MIMALLOC_MALLOC, Role::Entry(2)).offset, 0);
    }

    #[test]
    fn a_32_bit_move_is_not_a_copy() {
        // mov %edi,%esi; mov %rax,%rdi; push %rbx: the size's upper half is lost.
        let code = [0x89, 0xfe, 0x48, 0x89, 0xc7, 0x53];
        assert_eq!(probe_offset(&code, Role::Entry(1)).offset, 0);
    }

    /// Debian 12's libjemalloc2 `free`: its fast path in rax, rcx and rdx, then `jne`.
    const JEMALLOC_FREE: &[u8] = &[
        0x48, 0x89, 0xf8, // mov %rdi,%rax
        0x48, 0x8b, 0x15, 0x0e, 0x53, 0x0a, 0x00, // mov 0xa530e(%rip),%rdx
        0x48, 0x89, 0xf9, // mov %rdi,%rcx
        0x48, 0xc1, 0xe8, 0x1a, // shr $0x1a,%rax
        0x48, 0x81, 0xe1, 0x00, 0x00, 0x00, 0xc0, // and $0xffffffffc0000000,%rcx
        0x25, 0xf0, 0x00, 0x00, 0x00, // and $0xf0,%eax
        0x64, 0x48, 0x03, 0x04, 0x25, 0x00, 0x00, 0x00, 0x00, // add %fs:0x0,%rax
        0x48, 0x01, 0xd0, // add %rdx,%rax
        0x48, 0x3b, 0x88, 0xb0, 0x01, 0x00, 0x00, // cmp 0x1b0(%rax),%rcx
        0x0f, 0x85, 0x8a, 0x00, 0x00, 0x00, // jne
    ];

    #[test]
    fn jemalloc_free_is_probed_at_its_first_branch() {
        assert_eq!(probe_offset(JEMALLOC_FREE, Role::Free).offset, 0x30);
    }

    /// Debian 12's libmimalloc2.0 `free`: mov %rdi,%rcx; test %rdi,%rdi; je
    const MIMALLOC_FREE: &[u8] = &[0x48, 0x89, 0xf9, 0x48, 0x85, 0xff, 0x74, 0x5d];

    #[test]
    fn mimalloc_free_is_probed_at_its_null_test_branch() {
        assert_eq!(probe_offset(MIMALLOC_FREE, Role::Free).offset, 6);
    }

    #[test]
    fn stays_at_zero_when_memory_or_the_stack_pointer_is_written() {
        // mov %rax,(%rdi); push %rbx
        assert_eq!(
            probe_offset(&[0x48, 0x89, 0x07, 0x53], Role::Free).offset,
            0
        );
        // sub $0x8,%rsp; push %rbx
        assert_eq!(
            probe_offset(&[0x48, 0x83, 0xec, 0x08, 0x53], Role::Entry(1)).offset,
            0
        );
    }

    #[test]
    fn a_null_test_of_another_register_is_not_skipped() {
        // test %rsi,%rsi; je; push %rbp
        let other = [0x48, 0x85, 0xf6, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(probe_offset(&other, Role::Free).offset, 3);
    }

    #[test]
    fn undecodable_or_empty_code_stays_at_zero() {
        assert_eq!(probe_offset(&[], Role::Entry(1)).offset, 0);
        assert_eq!(probe_offset(&[0x0f, 0x0b], Role::Free).offset, 0); // ud2
    }

    fn decode_at(code: &[u8], offset: u64) -> Instruction {
        let at = usize::try_from(offset).unwrap();
        Decoder::with_ip(64, &code[at..], offset, DecoderOptions::NONE).decode()
    }

    #[test]
    fn real_libc_and_libstdcxx_probes_land_on_emulated_instructions() {
        let names = ["malloc", "free", "calloc", "realloc", "posix_memalign"];
        let functions = ElfObject::open(&crate::attach::elf::own_libc())
            .unwrap()
            .functions(&names)
            .unwrap();
        for name in names {
            let code = &functions[name].prologue;
            let role = match name {
                "free" => Role::Free,
                "malloc" => Role::Entry(1),
                "posix_memalign" => Role::Entry(3),
                _ => Role::Entry(2),
            };
            let offset = probe_offset(code, role).offset;
            let chosen = decode_at(code, offset);
            assert!(
                offset == 0 || is_emulated(&chosen),
                "{name}+{offset} is {:?}, which the kernel single-steps",
                chosen.mnemonic()
            );
            if is_emulated(&decode_at(code, 0)) {
                assert_eq!(offset, 0, "{name} starts emulated and must stay at 0");
            }
        }
        // glibc's free opens with a NULL test: its probe must have moved off it.
        assert!(probe_offset(&functions["free"].prologue, Role::Free).offset > 0);

        // libstdc++ is built with CET: its `operator new` opens with endbr64, a test and
        // a mov before its first push.
        let libstdcxx = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
        let new = &ElfObject::open(libstdcxx)
            .expect("libstdc++ is installed with g++ (cargo xtask setup)")
            .functions(&["_Znwm"])
            .unwrap()["_Znwm"];
        let offset = probe_offset(&new.prologue, Role::Entry(1)).offset;
        assert!(offset > 0, "operator new should move past its endbr64");
        assert!(is_emulated(&decode_at(&new.prologue, offset)));
    }
}
