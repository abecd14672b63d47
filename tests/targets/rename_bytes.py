#!/usr/bin/env python3
"""Rewrites a name in a linked program, in place, wherever its bytes occur (the symbol
table, the DWARF strings): a way to give a function a name no compiler writes.

    rename_bytes.py IN OUT OLD NEW [OLD NEW]...

OLD and NEW are written with Python's backslash escapes (\\x01, \\n, \\xff) and must be
the same length, so no offset in the file moves. Fails if OLD does not occur.
"""
import sys


def unescape(text):
    return text.encode("latin-1").decode("unicode_escape").encode("latin-1")


def main():
    if len(sys.argv) < 5 or len(sys.argv) % 2 != 1:
        sys.exit(__doc__)
    source, target = sys.argv[1:3]
    data = open(source, "rb").read()
    pairs = sys.argv[3:]
    for old, new in zip(pairs[::2], pairs[1::2]):
        old, new = unescape(old), unescape(new)
        if len(old) != len(new):
            sys.exit(f"rename_bytes.py: {old!r} and {new!r} differ in length")
        if old not in data:
            sys.exit(f"rename_bytes.py: {old!r} is not in {source}")
        data = data.replace(old, new)
    open(target, "wb").write(data)


main()
