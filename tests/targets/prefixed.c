/*
 * prefixed: leaks through an allocator that exports only prefixed names
 * (libprefixed_alloc.so: je_malloc, je_calloc, je_realloc, je_free, on its own mmap'd
 * memory) and, beside it, through libc's malloc; churns blocks of both, all freed.
 * Traced with `leakbpf --symbol-prefix je_`.
 *
 *   prefixed [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h.
 */
#include "alloc_target.h"

void *je_malloc(size_t size);
void *je_calloc(size_t nmemb, size_t size);
void *je_realloc(void *p, size_t size);
void je_free(void *p);

const char *const target_name = "prefixed";

enum {
    T_JE_MALLOC,
    T_JE_CALLOC,
    T_JE_REALLOC,
    T_JE_REALLOC_IN_PLACE,
    T_JE_REALLOC_NULL,
    T_MALLOC,
    T_COUNT
};

static struct truth truths[T_COUNT] = {
    {"leak_je_malloc", 0, 0},  {"leak_je_calloc", 0, 0},          {"leak_je_realloc", 0, 0},
    {"leak_je_realloc_in_place", 0, 0}, {"leak_je_realloc_null", 0, 0}, {"leak_malloc", 0, 0},
};

NOINLINE void leak_je_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_JE_MALLOC], count, je_malloc(size), size);
}

NOINLINE void leak_je_calloc(int count, size_t nmemb, size_t size) {
    LEAK_EACH(&truths[T_JE_CALLOC], count, je_calloc(nmemb, size), nmemb * size);
}

/* The je_malloc'd block is consumed by je_realloc, which moves it to a larger class:
 * the leak is the je_realloc's. */
NOINLINE void leak_je_realloc(int count, size_t from, size_t to) {
    LEAK_RESIZED(&truths[T_JE_REALLOC], count, je_malloc, je_realloc, from, to, 0x51);
}

/* Within the block's size class, je_realloc returns the same address with a new size. */
NOINLINE void leak_je_realloc_in_place(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = je_malloc(from);
        if (p == NULL)
            die("je_malloc");
        memset(p, 0x52, from);
        void *q = je_realloc(p, to);
        if (q != p) {
            fprintf(stderr, "prefixed: je_realloc(p, %zu) moved the block\n", to);
            exit(1);
        }
        keep(&truths[T_JE_REALLOC_IN_PLACE], q, to);
    }
}

/* Read through a volatile so the compiler keeps je_realloc(NULL, n) as written. */
static void *volatile null_block = NULL;

NOINLINE void leak_je_realloc_null(int count, size_t size) {
    LEAK_EACH(&truths[T_JE_REALLOC_NULL], count, je_realloc(null_block, size), size);
}

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

static void je_release(void *p) {
    je_free(p);
    stats.frees++;
}

/* Allocations through every prefixed name and through libc, each given back. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        char *p = got(je_malloc(size));
        p[0] = (char)i;
        je_release(p);

        je_release(got(je_calloc(1 + i % 32, 8)));

        /* A je_realloc chain: moves, stays in place, moves back. */
        p = got(je_malloc(16));
        p = got(je_realloc(p, 64 + i % 64));
        p = got(je_realloc(p, 3000 + i % 300));
        p = got(je_realloc(p, 3500));
        p = got(je_realloc(p, 24));
        je_release(p);

        je_release(got(je_realloc(null_block, size)));

        /* je_realloc(p, 0) frees p (not counted in stats.frees: no free call). */
        p = got(je_malloc(size));
        if (je_realloc(p, 0) != NULL) {
            fprintf(stderr, "prefixed: je_realloc(p, 0) returned a block\n");
            exit(1);
        }

        release(got(malloc(size)));
        release(got(calloc(2, size)));
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 150000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_je_malloc(6, 1234);
    leak_je_calloc(5, 33, 17);
    leak_je_realloc(4, 48, 4100);
    leak_je_realloc_in_place(3, 3000, 3900);
    leak_je_realloc_null(2, 777);
    leak_malloc(7, 555);
    churn(rounds);

    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
