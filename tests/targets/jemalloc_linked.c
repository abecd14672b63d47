/*
 * jemalloc_linked: linked with -ljemalloc (ahead of libc), so malloc, calloc, realloc,
 * posix_memalign and free are jemalloc's; it also leaks through jemalloc's own API,
 * mallocx and rallocx, and churns blocks freed by free, dallocx and sdallocx.
 *
 *   jemalloc_linked [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h.
 */
#define _GNU_SOURCE
#include <jemalloc/jemalloc.h>

#include "alloc_target.h"

const char *const target_name = "jemalloc_linked";

enum { T_MALLOC, T_CALLOC, T_REALLOC, T_POSIX_MEMALIGN, T_MALLOCX, T_RALLOCX, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"leak_malloc", 0, 0},  {"leak_calloc", 0, 0}, {"leak_realloc", 0, 0},
    {"leak_posix_memalign", 0, 0}, {"leak_mallocx", 0, 0}, {"leak_rallocx", 0, 0},
};

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_CALLOC], count, calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_REALLOC], count, malloc, realloc, from, to, 0x31);
}

NOINLINE void leak_posix_memalign(int count, size_t alignment, size_t size) {
    LEAK_POSIX_MEMALIGN(&truths[T_POSIX_MEMALIGN], count, alignment, size);
}

NOINLINE void leak_mallocx(int count, size_t size, int flags) {
    LEAK_EACH(&truths[T_MALLOCX], count, mallocx(size, flags), size);
}

/* The mallocx'd block is consumed by rallocx: the leak is the rallocx's. */
NOINLINE void leak_rallocx(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = mallocx(from, 0);
        if (p == NULL)
            die("mallocx");
        memset(p, 0x32, from);
        keep(&truths[T_RALLOCX], rallocx(p, to, MALLOCX_ZERO), to);
    }
}

static void release_d(void *p) {
    dallocx(p, 0);
    stats.frees++;
}

static void release_sd(void *p, size_t size, int flags) {
    sdallocx(p, size, flags);
    stats.frees++;
}

/* Allocations through every entry point, each given back: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        CHURN_MALLOC_CALLOC_REALLOC(i, size, 3000);

        CHURN_POSIX_MEMALIGN(size);

        release_d(got(mallocx(size, 0)));
        release_sd(got(mallocx(size, MALLOCX_ZERO)), size, 0);
        release_sd(got(mallocx(size, MALLOCX_ALIGN(64))), size, MALLOCX_ALIGN(64));

        /* An rallocx chain, then sized deallocation of its last size. */
        char *p = got(mallocx(40, 0));
        p = got(rallocx(p, 400 + i % 100, 0));
        p = got(rallocx(p, 5000, MALLOCX_ZERO));
        release_sd(p, 5000, 0);

        /* Blocks of one API given back through the other. */
        release_sd(got(malloc(size)), size, 0);
        release(got(mallocx(size, 0)));
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 150000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_malloc(6, 1500);
    leak_calloc(5, 41, 7);
    leak_realloc(4, 32, 2900);
    leak_posix_memalign(3, 256, 600);
    leak_mallocx(7, 1700, MALLOCX_ALIGN(64) | MALLOCX_ZERO);
    leak_rallocx(2, 100, 5000);
    churn(rounds);

    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
