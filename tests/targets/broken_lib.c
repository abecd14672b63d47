/*
 * libbroken_elf.so: what broken_elf.c leaks through. The Makefile builds it intact, then
 * breaks copies of it in ways the dynamic linker never notices (see break_elf.py).
 */
#include <stdlib.h>

/* The allocator's direct caller, in the library: frames[0] of broken_elf's leak. */
__attribute__((noinline)) void *broken_lib_malloc(size_t size) {
    return malloc(size);
}
