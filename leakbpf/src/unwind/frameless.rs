//! Call sites inside frameless allocation wrappers, so a stack walked at `malloc` names
//! the code that called the wrapper.
//!
//! libstdc++'s `operator new` calls `malloc` without setting up a frame pointer, so the
//! frame-pointer walk from `malloc` goes from `operator new` straight to the caller of
//! the function that said `new`, skipping it: the one frame a leak report needs. Probing
//! `operator new` to take the stack there costs a whole uprobe per allocation. Instead,
//! each call instruction in a wrapper is described by the code around its return address
//! and by the size of the wrapper's frame there (from `.eh_frame`): the eBPF side, seeing
//! such a return address at the stack pointer, steps over the wrapper's frame. The code
//! bytes, unlike an address, are the same in every process that maps the object, before
//! and after it is mapped.

use gimli::{
    BaseAddresses, CfaRule, EhFrame, LittleEndian, RegisterRule, UnwindContext, UnwindSection,
    X86_64,
};
use iced_x86::{Decoder, DecoderOptions, FlowControl};
use leakbpf_common::WrapperFrame;
use object::{Object, ObjectSection};

use crate::attach::elf::{ElfObject, Function};

/// Bytes of code taken on each side of a return address to recognise it.
const CONTEXT: usize = 8;

/// A call made by a frameless wrapper, as the eBPF side recognises it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrapperCall {
    /// The code just before and from the return address, as little-endian words: the
    /// call instruction's end and what follows it, which no other call site shares.
    pub code: [u64; 2],
    pub frame: WrapperFrame,
}

/// The calls that `function` of `elf` makes, each with its frame at the return address.
/// A call whose frame the unwind table does not describe simply (canonical frame address
/// relative to the stack pointer, frame pointer untouched or saved in the frame) is left
/// out: the walk then goes on as it would have without this.
pub fn calls(elf: &ElfObject, function: &Function) -> Vec<WrapperCall> {
    let Ok(file) = object::File::parse(elf.data()) else {
        return Vec::new();
    };
    let Some(unwind) = file.section_by_name(".eh_frame") else {
        return Vec::new();
    };
    let Ok(unwind_data) = unwind.data() else {
        return Vec::new();
    };
    let eh_frame = EhFrame::new(unwind_data, LittleEndian);
    let mut bases = BaseAddresses::default().set_eh_frame(unwind.address());
    if let Some(text) = file.section_by_name(".text") {
        bases = bases.set_text(text.address());
    }
    let mut context = UnwindContext::new();
    let Some(code) = elf.bytes(function.file_offset, function.size) else {
        return Vec::new();
    };
    let mut decoder = Decoder::with_ip(64, code, function.address, DecoderOptions::NONE);
    let mut calls = Vec::new();
    for instruction in &mut decoder {
        if instruction.is_invalid() {
            break;
        }
        if instruction.flow_control() != FlowControl::Call
            && instruction.flow_control() != FlowControl::IndirectCall
        {
            continue;
        }
        let return_address = instruction.next_ip();
        let Ok(row) = eh_frame.unwind_info_for_address(
            &bases,
            &mut context,
            return_address,
            EhFrame::cie_from_offset,
        ) else {
            continue;
        };
        let frame_size = match *row.cfa() {
            CfaRule::RegisterAndOffset { register, offset } if register == X86_64::RSP => offset,
            _ => continue,
        };
        // The saved frame pointer is at the canonical frame address plus `offset`, and
        // the wrapper's return address one word below that address.
        let saved_fp = match row.register(X86_64::RBP) {
            None | Some(RegisterRule::Undefined | RegisterRule::SameValue) => 0,
            Some(RegisterRule::Offset(offset)) if offset < -8 => offset + 8,
            Some(_) => continue,
        };
        let Ok(frame_size) = u64::try_from(frame_size) else {
            continue;
        };
        let around = function.file_offset + (return_address - function.address);
        let Some(bytes) = elf.bytes(around - CONTEXT as u64, 2 * CONTEXT as u64) else {
            continue;
        };
        if frame_size < 8 {
            continue;
        }
        let word = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().unwrap_or_default());
        calls.push(WrapperCall {
            code: [word(0), word(CONTEXT)],
            frame: WrapperFrame {
                size: frame_size,
                saved_fp,
            },
        });
    }
    calls
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libstdc++'s `operator new(size_t)` here pushes one register and calls `malloc`:
    /// its frame at that return address is 16 bytes, and the code there is what it is
    /// in the file.
    #[test]
    fn finds_the_malloc_call_of_libstdcxx_operator_new() {
        let libstdcxx = std::path::Path::new("/usr/lib/x86_64-linux-gnu/libstdc++.so.6");
        let elf = ElfObject::open(libstdcxx)
            .expect("libstdc++ is installed with g++ (cargo xtask setup)");
        let functions = elf.functions(&["_Znwm", "_Znam"]).unwrap();
        let new = &functions["_Znwm"];
        let new_calls = calls(&elf, new);
        // The call to malloc, and the calls to the new-handler on failure.
        assert!(
            !new_calls.is_empty() && new_calls.len() <= 3,
            "{new_calls:?}"
        );
        assert!(
            new_calls
                .iter()
                .all(|c| c.frame.size == 16 && c.frame.saved_fp == 0),
            "{new_calls:?}"
        );
        let code = elf.bytes(new.file_offset, new.size).unwrap();
        let after_first_call = code
            .iter()
            .position(|&byte| byte == 0xe8)
            .map(|call| call + 5)
            .unwrap();
        let expected = u64::from_le_bytes(
            code[after_first_call..after_first_call + 8]
                .try_into()
                .unwrap(),
        );
        assert_eq!(new_calls[0].code[1], expected);
        // `new[]` jumps to `new`: not a frame of its own.
        assert!(calls(&elf, &functions["_Znam"]).is_empty());
    }
}
