/*
 * broken_elf: leaks through a library whose section headers or DWARF are broken (the
 * Makefile's break_elf.py; the dynamic linker reads only program headers, so it loads
 * them all). The test picks the copy with LD_LIBRARY_PATH.
 *
 *   broken_elf [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h.
 */
#include "alloc_target.h"

void *broken_lib_malloc(size_t size);

const char *const target_name = "broken_elf";

static struct truth truths[] = {{"leak_through_library", 0, 0}};

/* Calls the library, which calls malloc: this is frames[1] of the leak. */
NOINLINE void leak_through_library(int count, size_t size) {
    LEAK_EACH(&truths[0], count, broken_lib_malloc(size), size);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++)
        CHURN_MALLOC_CALLOC_REALLOC(i, 16 + i % 241, 200);
}

int main(int argc, char **argv) {
    unsigned long rounds = 50000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    leak_through_library(6, 5555);
    churn(rounds);
    report_and_wait(truths, 1, wait);
    return 0;
}
