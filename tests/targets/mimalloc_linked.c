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
    for (int i = 0; i < count; i++)
        keep(&truths[T_MALLOC], malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    for (int i = 0; i < count; i++)
        keep(&truths[T_CALLOC], calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = malloc(from);
        if (p == NULL)
            die("malloc");
        memset(p, 0x41, from);
        keep(&truths[T_REALLOC], realloc(p, to), to);
    }
}

NOINLINE void leak_reallocarray(int count, size_t nmemb, size_t size) {
    for (int i = 0; i < count; i++)
        keep(&truths[T_REALLOCARRAY], reallocarray(NULL, nmemb, size), nmemb * size);
}

NOINLINE void leak_posix_memalign(int count, size_t alignment, size_t size) {
    for (int i = 0; i < count; i++) {
        void *p = NULL;
        int err = posix_memalign(&p, alignment, size);
        if (err != 0) {
            errno = err;
            die("posix_memalign");
        }
        keep(&truths[T_POSIX_MEMALIGN], p, size);
    }
}

NOINLINE void leak_aligned_alloc(int count, size_t alignment, size_t size) {
    for (int i = 0; i < count; i++)
        keep(&truths[T_ALIGNED_ALLOC], aligned_alloc(alignment, size), size);
}

NOINLINE void leak_mi_malloc(int count, size_t size) {
    for (int i = 0; i < count; i++)
        keep(&truths[T_MI_MALLOC], mi_malloc(size), size);
}

/* The mi_malloc'd block is consumed by mi_realloc: the leak is the mi_realloc's. */
NOINLINE void leak_mi_realloc(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = mi_malloc(from);
        if (p == NULL)
            die("mi_malloc");
        memset(p, 0x42, from);
        keep(&truths[T_MI_REALLOC], mi_realloc(p, to), to);
    }
}

static void release(void *p) {
    free(p);
    stats.frees++;
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

        char *p = got(malloc(size));
        p[0] = (char)i;
        release(p);

        release(got(calloc(1 + i % 32, 8)));

        /* A realloc chain: each step frees the previous block. */
        p = got(malloc(16));
        p = got(realloc(p, 64 + i % 64));
        p = got(realloc(p, 3000 + i % 300));
        p = got(realloc(p, 24));
        release(p);

        release(got(realloc(null_block, size)));
        release(got(reallocarray(null_block, 1 + i % 16, 12)));

        void *aligned = NULL;
        if (posix_memalign(&aligned, 32, size) != 0)
            die("posix_memalign");
        stats.allocations++;
        release(aligned);

        release(got(aligned_alloc(64, 128)));

        mi_release(got(mi_malloc(size)));
        p = got(mi_malloc(size));
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
