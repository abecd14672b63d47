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

impl Role {
    /// Whether the programs at the probe read `register`.
    fn reads(self, register: Register) -> bool {
        let arguments = match self {
            Role::Entry(n) => n,
            Role::Free => 1,
        };
        matches!(register, Register::RSP | Register::RBP)
            || ARGUMENTS[..arguments.min(ARGUMENTS.len())].contains(&register)
    }
}

/// How far into a prologue to look: the instructions that matter come first.
const MAX_INSTRUCTIONS: usize = 16;

/// The offset from the function's start of the instruction to probe.
///
/// # Examples
///
/// ```
/// use leakbpf::attach::placement::{Role, probe_offset};
/// // test %rdi,%rdi; je +0xbf; push %rbp
/// let free = [0x48, 0x85, 0xff, 0x0f, 0x84, 0xbf, 0, 0, 0, 0x55];
/// assert_eq!(probe_offset(&free, Role::Free), 9);
/// ```
pub fn probe_offset(prologue: &[u8], role: Role) -> u64 {
    let mut decoder = Decoder::with_ip(64, prologue, 0, DecoderOptions::NONE);
    let mut info = InstructionInfoFactory::new();
    let mut after_null_test = false;
    // The NULL test's branch, itself emulated: the probe's place if none is found past it.
    let mut null_branch = None;
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
            return instruction.ip();
        }
        if !leaves_entry_state(&instruction, &mut info, role) {
            break;
        }
        after_null_test = is_test_of_rdi(&instruction);
    }
    null_branch.unwrap_or(0)
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

/// True when running `instruction` keeps every register the probe's programs read and
/// all memory as they were, and goes on to the next instruction.
fn leaves_entry_state(
    instruction: &Instruction,
    info: &mut InstructionInfoFactory,
    role: Role,
) -> bool {
    if instruction.flow_control() != FlowControl::Next {
        return false;
    }
    let info = info.info(instruction);
    let writes = |access: OpAccess| {
        matches!(
            access,
            OpAccess::Write | OpAccess::CondWrite | OpAccess::ReadWrite | OpAccess::ReadCondWrite
        )
    };
    let writes_memory = info.used_memory().iter().any(|m| writes(m.access()));
    let writes_watched = info
        .used_registers()
        .iter()
        .any(|r| writes(r.access()) && role.reads(r.register().full_register()));
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
        assert_eq!(probe_offset(FREE, Role::Free), 9);
    }

    #[test]
    fn an_entry_probe_never_skips_a_branch() {
        // Without the NULL exemption the `je` itself is the first emulated instruction.
        assert_eq!(probe_offset(FREE, Role::Entry(1)), 3);
    }

    #[test]
    fn an_emulated_first_instruction_keeps_offset_zero() {
        assert_eq!(probe_offset(MALLOC, Role::Entry(1)), 0);
    }

    #[test]
    fn a_compare_with_memory_is_skipped() {
        assert_eq!(probe_offset(POSIX_MEMALIGN, Role::Entry(3)), 7);
    }

    #[test]
    fn stays_at_zero_when_an_argument_register_read_is_written() {
        // mov %rsi,%rax; mul %rdx (writes rdx); push %rbx
        let reallocarray = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x53];
        assert_eq!(probe_offset(&reallocarray, Role::Entry(3)), 0);
        // mov %rax,%rdi; push %rbx
        assert_eq!(probe_offset(&[0x48, 0x89, 0xc7, 0x53], Role::Entry(1)), 0);
    }

    #[test]
    fn an_argument_register_no_program_reads_may_be_written() {
        // mov %rsi,%rax; mul %rdx (writes rdx); push %rbx: malloc reads rdi alone.
        let code = [0x48, 0x89, 0xf0, 0x48, 0xf7, 0xe2, 0x53];
        assert_eq!(probe_offset(&code, Role::Entry(1)), 6);
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
        assert_eq!(probe_offset(JEMALLOC_FREE, Role::Free), 0x30);
    }

    /// Debian 12's libmimalloc2.0 `free`: mov %rdi,%rcx; test %rdi,%rdi; je
    const MIMALLOC_FREE: &[u8] = &[0x48, 0x89, 0xf9, 0x48, 0x85, 0xff, 0x74, 0x5d];

    #[test]
    fn mimalloc_free_is_probed_at_its_null_test_branch() {
        assert_eq!(probe_offset(MIMALLOC_FREE, Role::Free), 6);
    }

    #[test]
    fn stays_at_zero_when_memory_or_the_stack_pointer_is_written() {
        // mov %rax,(%rdi); push %rbx
        assert_eq!(probe_offset(&[0x48, 0x89, 0x07, 0x53], Role::Free), 0);
        // sub $0x8,%rsp; push %rbx
        assert_eq!(
            probe_offset(&[0x48, 0x83, 0xec, 0x08, 0x53], Role::Entry(1)),
            0
        );
    }

    #[test]
    fn a_null_test_of_another_register_is_not_skipped() {
        // test %rsi,%rsi; je; push %rbp
        let other = [0x48, 0x85, 0xf6, 0x0f, 0x84, 0xbf, 0x00, 0x00, 0x00, 0x55];
        assert_eq!(probe_offset(&other, Role::Free), 3);
    }

    #[test]
    fn undecodable_or_empty_code_stays_at_zero() {
        assert_eq!(probe_offset(&[], Role::Entry(1)), 0);
        assert_eq!(probe_offset(&[0x0f, 0x0b], Role::Free), 0); // ud2
    }

    fn decode_at(code: &[u8], offset: u64) -> Instruction {
        let at = usize::try_from(offset).unwrap();
        Decoder::with_ip(64, &code[at..], offset, DecoderOptions::NONE).decode()
    }

    #[test]
    fn real_libc_and_libstdcxx_probes_land_on_emulated_instructions() {
        let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
        let libc = maps
            .lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .find(|path| path.contains("/libc.so"))
            .expect("this test process maps libc");
        let names = ["malloc", "free", "calloc", "realloc", "posix_memalign"];
        let functions = ElfObject::open(libc.as_ref())
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
            let offset = probe_offset(code, role);
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
        assert!(probe_offset(&functions["free"].prologue, Role::Free) > 0);

        // libstdc++ is built with CET: its `operator new` opens with endbr64, a test and
        // a mov before its first push.
        let libstdcxx = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
        let new = &ElfObject::open(libstdcxx)
            .expect("libstdc++ is installed with g++ (cargo xtask setup)")
            .functions(&["_Znwm"])
            .unwrap()["_Znwm"];
        let offset = probe_offset(&new.prologue, Role::Entry(1));
        assert!(offset > 0, "operator new should move past its endbr64");
        assert!(is_emulated(&decode_at(&new.prologue, offset)));
    }
}
