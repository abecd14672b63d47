/*
 * mimalloc_linked: linked with -lmimalloc (ahead of libc), so malloc, calloc, realloc,
 * reallocarray, posix_memalign, aligned_alloc and free are mimalloc's; it also leaks
 * through mi_malloc and mi_realloc, which mimalloc's malloc and realloc are aliases of,
 * and churns blocks freed by free and mi_free.
 *
 *   mimalloc_linked [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h.
 */
#define _GNU_SOURCE
#include <mimalloc.h>

#include "alloc_target.h"

const char *const target_name = "mimalloc_linked";

enum {
    T_MALLOC,
    T_CALLOC,
    T_REALLOC,
    T_REALLOCARRAY,
    T_POSIX_MEMALIGN,
    T_ALIGNED_ALLOC,
    T_MI_MALLOC,
    T_MI_REALLOC,
    T_COUNT
};

static struct truth truths[T_COUNT] = {
    {"leak_malloc", 0, 0},         {"leak_calloc", 0, 0},
    {"leak_realloc", 0, 0},        {"leak_reallocarray", 0, 0},
    {"leak_posix_memalign", 0, 0}, {"leak_aligned_alloc", 0, 0},
    {"leak_mi_malloc", 0, 0},      {"leak_mi_realloc", 0, 0},
};

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_CALLOC], count, calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_REALLOC], count, malloc, realloc, from, to, 0x41);
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

NOINLINE void leak_mi_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MI_MALLOC], count, mi_malloc(size), size);
}

/* The mi_malloc'd block is consumed by mi_realloc: the leak is the mi_realloc's. */
NOINLINE void leak_mi_realloc(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_MI_REALLOC], count, mi_malloc, mi_realloc, from, to, 0x42);
}

static void mi_release(void *p) {
    mi_free(p);
    stats.frees++;
}

/* Read through a volatile so the compiler keeps realloc(NULL, n) as written. */
static void *volatile null_block = NULL;

/* Allocations through every entry point, each given back: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        CHURN_MALLOC_CALLOC_REALLOC(i, size, 3000);

        release(got(realloc(null_block, size)));
        release(got(reallocarray(null_block, 1 + i % 16, 12)));

        CHURN_POSIX_MEMALIGN(size);

        release(got(aligned_alloc(64, 128)));

        mi_release(got(mi_malloc(size)));
        void *p = got(mi_malloc(size));
        p = got(mi_realloc(p, 2 * size));
        mi_release(p);
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 150000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_malloc(5, 2222);
    leak_calloc(4, 19, 23);
    leak_realloc(3, 40, 3333);
    leak_reallocarray(2, 60, 11);
    leak_posix_memalign(6, 128, 450);
    leak_aligned_alloc(7, 256, 768);
    leak_mi_malloc(8, 999);
    leak_mi_realloc(9, 30, 1800);
    churn(rounds);

    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
