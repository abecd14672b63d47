//! Probe placement on a function's first bytes, which come from the target's files:
//! the chosen offset is inside the bytes, and past 0 only on an instruction the kernel
//! emulates.

#![no_main]

use iced_x86::{Decoder, DecoderOptions};
use leakbpf::attach::placement::{Role, is_emulated, probe_offset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, code)) = data.split_first() else {
        return;
    };
    let role = if first & 1 == 0 {
        Role::Entry
    } else {
        Role::Free
    };
    let offset = probe_offset(code, role);
    if offset == 0 {
        return;
    }
    let at = usize::try_from(offset).unwrap();
    assert!(at < code.len(), "offset {offset} past {} bytes", code.len());
    let instruction = Decoder::with_ip(64, &code[at..], offset, DecoderOptions::NONE).decode();
    assert!(
        !instruction.is_invalid() && is_emulated(&instruction),
        "offset {offset} is on {:?}, which the kernel single-steps",
        instruction.mnemonic()
    );
});
