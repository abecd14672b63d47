/*
 * leaker: leaks known, distinct amounts through every allocator leakbpf probes, each
 * from its own function, and churns millions of allocations that are all freed.
 *
 *   leaker [--wait] [--rounds N] [--no-pvalloc]
 *
 * --no-pvalloc skips leak_pvalloc, for cross-checking under valgrind (which aborts on
 * pvalloc); --rounds sets the churn's iterations (10 allocations each).
 *
 * Protocol and truth: see alloc_target.h. The churn line also counts the churn's failed
 * allocations.
 */
#define _GNU_SOURCE
#include <malloc.h>
#include <stdint.h>

#include "alloc_target.h"

const char *const target_name = "leaker";

enum {
    T_MALLOC,
    T_CALLOC,
    T_REALLOC_GROW,
    T_REALLOC_SHRINK,
    T_REALLOCARRAY,
    T_POSIX_MEMALIGN,
    T_ALIGNED_ALLOC,
    T_MEMALIGN,
    T_VALLOC,
    T_PVALLOC,
    T_COUNT
};

static struct truth truths[T_COUNT] = {
    [T_MALLOC] = {"leak_malloc", 0, 0},
    [T_CALLOC] = {"leak_calloc", 0, 0},
    [T_REALLOC_GROW] = {"leak_realloc_grow", 0, 0},
    [T_REALLOC_SHRINK] = {"leak_realloc_shrink", 0, 0},
    [T_REALLOCARRAY] = {"leak_reallocarray", 0, 0},
    [T_POSIX_MEMALIGN] = {"leak_posix_memalign", 0, 0},
    [T_ALIGNED_ALLOC] = {"leak_aligned_alloc", 0, 0},
    [T_MEMALIGN] = {"leak_memalign", 0, 0},
    [T_VALLOC] = {"leak_valloc", 0, 0},
    [T_PVALLOC] = {"leak_pvalloc", 0, 0},
};

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_CALLOC], count, calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc_grow(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_REALLOC_GROW], count, malloc, realloc, from, to, 0x11);
}

NOINLINE void leak_realloc_shrink(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_REALLOC_SHRINK], count, malloc, realloc, from, to, 0x22);
}

NOINLINE void leak_reallocarray(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_REALLOCARRAY], count, reallocarray(NULL, nmemb, size), nmemb * size);
}

NOINLINE void leak_posix_memalign(int count, size_t alignment, size_t size) {
    LEAK_POSIX_MEMALIGN(&truths[T_POSIX_MEMALIGN], count, alignment, size);
}

NOINLINE void leak_aligned_alloc(int count, size_t alignment, size_t size) {
    LEAK_EACH(&truths[T_ALIGNED_ALLOC], count, aligned_alloc(alignment, size), size);
}

NOINLINE void leak_memalign(int count, size_t alignment, size_t size) {
    LEAK_EACH(&truths[T_MEMALIGN], count, memalign(alignment, size), size);
}

NOINLINE void leak_valloc(int count, size_t size) {
    LEAK_EACH(&truths[T_VALLOC], count, valloc(size), size);
}

NOINLINE void leak_pvalloc(int count, size_t size) {
    LEAK_EACH(&truths[T_PVALLOC], count, pvalloc(size), size);
}

/* Read through volatiles so the compiler keeps these calls as written (it would turn
 * realloc(NULL, n) into malloc(n) and drop free(NULL)). */
static volatile size_t huge = SIZE_MAX / 2;
static void *volatile null_block = NULL;

/* Millions of allocations through every allocator, all freed: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        CHURN_MALLOC_CALLOC_REALLOC(i, size, 200);

        release(got(realloc(null_block, size)));

        /* realloc(p, 0) frees p (glibc returns NULL). */
        void *p = got(malloc(size));
        p = realloc(p, 0);
        if (p != NULL)
            release(p);

        CHURN_POSIX_MEMALIGN(size);

        release(got(aligned_alloc(64, 128)));

        free(null_block);
    }

    /* An overflowing calloc must fail, and leave nothing behind. */
    void *q = calloc(huge, 4);
    if (q != NULL) {
        fprintf(stderr, "leaker: calloc(SIZE_MAX/2, 4) succeeded\n");
        exit(1);
    }
    stats.failed++;
}

int main(int argc, char **argv) {
    unsigned long rounds = 350000;
    int no_pvalloc = 0;
    int wait = parse_options(argc, argv, "--rounds", &rounds, "--no-pvalloc", &no_pvalloc);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_malloc(5, 1111);
    leak_calloc(4, 37, 13);
    leak_realloc_grow(3, 24, 2600);
    leak_realloc_shrink(2, 50000, 3000);
    leak_reallocarray(6, 70, 9);
    leak_posix_memalign(7, 64, 320);
    leak_aligned_alloc(8, 128, 1280);
    leak_memalign(9, 32, 777);
    leak_valloc(1, 5000);
    if (!no_pvalloc)
        leak_pvalloc(10, 321);
    churn(rounds);

    print_truths(truths, T_COUNT);
    print_churn("churn", 1);
    finish(wait);
    return 0;
}
