//! The `bpf` system calls aya 0.14 does not make: loading a kprobe program for the
//! uprobe_multi attach type (with its BTF), and creating uprobe_multi links.

use std::{
    ffi::CStr,
    io,
    mem::size_of,
    os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
};

/// From `enum bpf_cmd`, `enum bpf_prog_type` and `enum bpf_attach_type` (uapi, stable).
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_BTF_LOAD: libc::c_long = 18;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_PROG_TYPE_KPROBE: u32 = 2;
pub const BPF_TRACE_UPROBE_MULTI: u32 = 48;
pub const BPF_TRACE_UPROBE_SESSION: u32 = 57;
/// `BPF_F_UPROBE_MULTI_RETURN`: the link's probes fire at the functions' returns.
const UPROBE_MULTI_RETURN: u32 = 1;

const LICENSE: &CStr = c"GPL";
/// The verifier's log of a program it refused, asked for on a second try.
const LOG_BYTES: usize = 1 << 20;
/// The log's last lines, which say why.
const LOG_TAIL_LINES: usize = 6;

/// The `BPF_PROG_LOAD` member of `union bpf_attr`, up to `expected_attach_type`.
#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
    prog_btf_fd: u32,
    func_info_rec_size: u32,
    func_info: u64,
    func_info_cnt: u32,
    line_info_rec_size: u32,
    line_info: u64,
    line_info_cnt: u32,
    attach_btf_id: u32,
}

/// The `BPF_BTF_LOAD` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BtfLoadAttr {
    btf: u64,
    log_buf: u64,
    size: u32,
    log_size: u32,
    log_level: u32,
    log_true_size: u32,
}

/// A program's BTF: the object's, loaded (see [`load_btf`]), and the program's records
/// in it, as the kernel reads them (`bpf_func_info`, `bpf_line_info`). The verifier
/// needs them for functions passed as callbacks (`bpf_loop`).
pub struct ProgramBtf<'a> {
    pub fd: BorrowedFd<'a>,
    pub func_info: &'a [u8],
    pub func_info_rec_size: usize,
    pub func_info_cnt: usize,
    pub line_info: &'a [u8],
    pub line_info_rec_size: usize,
    pub line_info_cnt: usize,
}

/// Loads BTF (its raw bytes) into the kernel.
pub fn load_btf(raw: &[u8]) -> io::Result<OwnedFd> {
    let mut attr = BtfLoadAttr {
        btf: raw.as_ptr() as u64,
        size: u32::try_from(raw.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        ..BtfLoadAttr::default()
    };
    bpf(BPF_BTF_LOAD, &mut attr)
}

/// The `BPF_LINK_CREATE` member of `union bpf_attr`, with its `uprobe_multi` part.
#[repr(C)]
#[derive(Default)]
struct UprobeMultiLinkAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    path: u64,
    offsets: u64,
    ref_ctr_offsets: u64,
    cookies: u64,
    cnt: u32,
    uprobe_flags: u32,
    pid: u32,
    /// Named, so that it is zero: the kernel refuses non-zero bytes past the last field
    /// it knows.
    padding: u32,
}

/// Loads `insns` (eBPF instructions, 8 bytes each) as a kprobe program for
/// `attach_type`, named `name` (the first 15 bytes), with its `btf`. A refusal carries
/// the end of the verifier's log.
pub fn load_kprobe<I>(
    insns: &[I],
    attach_type: u32,
    name: Option<&str>,
    btf: Option<&ProgramBtf<'_>>,
) -> io::Result<OwnedFd> {
    const { assert!(size_of::<I>() == 8, "an eBPF instruction is 8 bytes") };
    let mut prog_name = [0; 16];
    if let Some(name) = name {
        let length = name.len().min(prog_name.len() - 1);
        prog_name[..length].copy_from_slice(&name.as_bytes()[..length]);
    }
    let attr = || ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_KPROBE,
        insn_cnt: u32::try_from(insns.len()).unwrap_or(u32::MAX),
        insns: insns.as_ptr() as u64,
        license: LICENSE.as_ptr() as u64,
        prog_name,
        expected_attach_type: attach_type,
        prog_btf_fd: btf.map_or(0, |btf| btf.fd.as_raw_fd() as u32),
        func_info_rec_size: btf.map_or(0, |btf| btf.func_info_rec_size as u32),
        func_info: btf.map_or(0, |btf| btf.func_info.as_ptr() as u64),
        func_info_cnt: btf.map_or(0, |btf| btf.func_info_cnt as u32),
        line_info_rec_size: btf.map_or(0, |btf| btf.line_info_rec_size as u32),
        line_info: btf.map_or(0, |btf| btf.line_info.as_ptr() as u64),
        line_info_cnt: btf.map_or(0, |btf| btf.line_info_cnt as u32),
        ..ProgLoadAttr::default()
    };
    let err = match bpf(BPF_PROG_LOAD, &mut attr()) {
        Ok(program) => return Ok(program),
        Err(err) => err,
    };
    let mut log = vec![0u8; LOG_BYTES];
    let mut logged = ProgLoadAttr {
        log_level: 1,
        log_size: LOG_BYTES as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..attr()
    };
    if let Ok(program) = bpf(BPF_PROG_LOAD, &mut logged) {
        return Ok(program);
    }
    let text = CStr::from_bytes_until_nul(&log)
        .map(|text| text.to_string_lossy().into_owned())
        .unwrap_or_default();
    let mut tail: Vec<&str> = text.lines().rev().take(LOG_TAIL_LINES).collect();
    tail.reverse();
    Err(io::Error::new(
        err.kind(),
        format!("{err}; the verifier said: {}", tail.join(" / ")),
    ))
}

/// A uprobe_multi link of `program` on `path` at each of `offsets` (file offsets), with
/// the matching `cookies`; at the functions' returns with `at_return`; in process `pid`
/// only, or every process for 0.
pub fn link_uprobe_multi(
    program: &impl AsFd,
    attach_type: u32,
    path: &CStr,
    offsets: &[u64],
    cookies: &[u64],
    at_return: bool,
    pid: u32,
) -> io::Result<OwnedFd> {
    if offsets.len() != cookies.len() {
        return Err(io::Error::from(io::ErrorKind::InvalidInput));
    }
    let mut attr = UprobeMultiLinkAttr {
        prog_fd: program.as_fd().as_raw_fd() as u32,
        attach_type,
        path: path.as_ptr() as u64,
        offsets: offsets.as_ptr() as u64,
        cookies: cookies.as_ptr() as u64,
        cnt: u32::try_from(offsets.len()).map_err(|_| io::ErrorKind::InvalidInput)?,
        uprobe_flags: if at_return { UPROBE_MULTI_RETURN } else { 0 },
        pid,
        ..UprobeMultiLinkAttr::default()
    };
    bpf(BPF_LINK_CREATE, &mut attr)
}

/// The `bpf` system call with `command` and its `attr`; the descriptor it returns.
fn bpf<A>(command: libc::c_long, attr: &mut A) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is the member of `union bpf_attr` that `command` reads, all its
    // bytes initialized; its pointers point at statics or at data the caller keeps
    // alive for the call.
    let result = unsafe { libc::syscall(libc::SYS_bpf, command, &raw mut *attr, size_of::<A>()) };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = i32::try_from(result).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: a new descriptor the kernel just gave this process, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attributes_are_laid_out_as_the_kernel_reads_them() {
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, func_info), 80);
        assert_eq!(std::mem::offset_of!(ProgLoadAttr, line_info), 96);
        assert_eq!(size_of::<ProgLoadAttr>(), 112);
        assert_eq!(size_of::<BtfLoadAttr>(), 32);
        assert_eq!(std::mem::offset_of!(UprobeMultiLinkAttr, path), 16);
        assert_eq!(std::mem::offset_of!(UprobeMultiLinkAttr, pid), 56);
        assert_eq!(size_of::<UprobeMultiLinkAttr>(), 64);
    }
}
