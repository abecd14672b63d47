/*
 * static_glibc: a fully static executable (gcc -static): glibc's malloc is in the
 * program itself, and there is no dynamic loader, no libc.so. Leaks through malloc,
 * calloc, realloc, posix_memalign and aligned_alloc; churns blocks, all freed.
 *
 *   static_glibc [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h.
 */
#define _GNU_SOURCE
#include "alloc_target.h"

const char *const target_name = "static_glibc";

enum { T_MALLOC, T_CALLOC, T_REALLOC, T_POSIX_MEMALIGN, T_ALIGNED_ALLOC, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"leak_malloc", 0, 0},         {"leak_calloc", 0, 0},        {"leak_realloc", 0, 0},
    {"leak_posix_memalign", 0, 0}, {"leak_aligned_alloc", 0, 0},
};

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_CALLOC], count, calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_REALLOC], count, malloc, realloc, from, to, 0x61);
}

NOINLINE void leak_posix_memalign(int count, size_t alignment, size_t size) {
    LEAK_POSIX_MEMALIGN(&truths[T_POSIX_MEMALIGN], count, alignment, size);
}

NOINLINE void leak_aligned_alloc(int count, size_t alignment, size_t size) {
    LEAK_EACH(&truths[T_ALIGNED_ALLOC], count, aligned_alloc(alignment, size), size);
}

/* Read through a volatile so the compiler keeps realloc(NULL, n) as written. */
static void *volatile null_block = NULL;

/* Allocations through every entry point, each given back: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        CHURN_MALLOC_CALLOC_REALLOC(i, size, 200);

        release(got(realloc(null_block, size)));

        CHURN_POSIX_MEMALIGN(size);

        release(got(aligned_alloc(64, 128)));
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 200000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_malloc(5, 1357);
    leak_calloc(6, 29, 11);
    leak_realloc(3, 20, 2468);
    leak_posix_memalign(4, 128, 808);
    leak_aligned_alloc(2, 256, 1536);
    churn(rounds);

    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
