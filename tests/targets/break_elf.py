#!/usr/bin/env python3
"""Breaks a copy of a 64-bit little-endian ELF shared library in a way the dynamic linker
never notices (it reads only the ELF header, the program headers and the segments they
map), but a symbolizer that reads section headers or DWARF does.

    break_elf.py HOW IN OUT

HOW is one of:
  intact                    an unchanged copy, to compare the others with
  debug_info_garbage        .debug_info overwritten with garbage
  debug_abbrev_garbage      .debug_abbrev, likewise
  debug_line_garbage        .debug_line, likewise
  debug_str_garbage         .debug_str, likewise
  debug_info_truncated      .debug_info's section header gives a quarter of its size: its
                            units run past the section's end
  section_headers_past_eof  e_shoff points past the end of the file
  section_headers_cut       the file ends halfway through the section header table
  section_names_garbage     every sh_name points far outside the section name table
  no_section_name_table     e_shstrndx names a section that does not exist
  eh_frame_garbage          .eh_frame overwritten with garbage: the call frame information
                            unwinders read (the dynamic linker never does)
"""
import struct
import sys

# Offsets in the ELF64 header and in a section header.
E_SHOFF, E_SHENTSIZE, E_SHNUM, E_SHSTRNDX = 0x28, 0x3A, 0x3C, 0x3E
SH_NAME, SH_OFFSET, SH_SIZE = 0x00, 0x18, 0x20


def u16(data, at):
    return struct.unpack_from("<H", data, at)[0]


def u32(data, at):
    return struct.unpack_from("<I", data, at)[0]


def u64(data, at):
    return struct.unpack_from("<Q", data, at)[0]


def section_headers(data):
    """The file offset of each section header."""
    shoff, entsize = u64(data, E_SHOFF), u16(data, E_SHENTSIZE)
    return [shoff + i * entsize for i in range(u16(data, E_SHNUM))]


def section(data, name):
    """(file offset of its header, of its contents, size) of the section called `name`."""
    headers = section_headers(data)
    names = u64(data, headers[u16(data, E_SHSTRNDX)] + SH_OFFSET)
    for header in headers:
        start = names + u32(data, header + SH_NAME)
        if data[start : data.index(b"\0", start)] == name.encode():
            return header, u64(data, header + SH_OFFSET), u64(data, header + SH_SIZE)
    sys.exit(f"break_elf.py: no section {name}")


def garbage(data, name):
    """Fills the section with bytes that look like nothing: no length, tag or opcode
    in them makes sense, and lengths run past the end."""
    _, offset, size = section(data, name)
    data[offset : offset + size] = bytes((0xFF - i * 7) & 0xFF for i in range(size))


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    how, source, target = sys.argv[1:]
    data = bytearray(open(source, "rb").read())
    if how == "intact":
        pass
    elif how.endswith("_garbage") and how.startswith("debug_"):
        garbage(data, "." + how[: -len("_garbage")])
    elif how == "eh_frame_garbage":
        garbage(data, ".eh_frame")
    elif how == "debug_info_truncated":
        header, _, size = section(data, ".debug_info")
        struct.pack_into("<Q", data, header + SH_SIZE, size // 4)
    elif how == "section_headers_past_eof":
        struct.pack_into("<Q", data, E_SHOFF, len(data) + 0x10000)
    elif how == "section_headers_cut":
        headers = section_headers(data)
        del data[headers[len(headers) // 2] + 7 :]
    elif how == "section_names_garbage":
        for header in section_headers(data):
            struct.pack_into("<I", data, header + SH_NAME, 0xFFFFFF00)
    elif how == "no_section_name_table":
        struct.pack_into("<H", data, E_SHSTRNDX, 0xFEFF)
    else:
        sys.exit(f"break_elf.py: cannot break an ELF file by {how!r}\n{__doc__}")
    open(target, "wb").write(data)


main()
