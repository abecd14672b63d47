"""Runs BCC's memleak (`memleak_shim.py /usr/sbin/memleak-bpfcc ARGS...`) with one fix to
Debian 12's python3-bpfcc 0.26: its ctypes declaration of libbcc's bpf_attach_uprobe
lacks the last argument, ref_ctr_offset, so every uprobe was registered with whatever
the stack held there as a reference-counter offset. The kernel then refuses the uprobe
("ref_ctr_offset mismatch") whenever another tracer has one at the same place, and
otherwise increments a 16-bit counter at that offset of the traced process's libc. Here
the argument is passed as 0, as BCC's Python code means it to be. Nothing else changes.
"""

import ctypes as ct
import runpy
import sys

from bcc import libbcc

_attach = libbcc.lib.bpf_attach_uprobe
_attach.restype = ct.c_int
_attach.argtypes = [
    ct.c_int,
    ct.c_int,
    ct.c_char_p,
    ct.c_char_p,
    ct.c_ulonglong,
    ct.c_int,
    ct.c_uint32,
]


def _attach_uprobe(progfd, attach_type, ev_name, binary_path, offset, pid, ref_ctr_offset=0):
    return _attach(progfd, attach_type, ev_name, binary_path, offset, pid, ref_ctr_offset)


libbcc.lib.bpf_attach_uprobe = _attach_uprobe

script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
