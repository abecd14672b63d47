/*
 * leaker: leaks known, distinct amounts through every allocator leakbpf probes, each
 * from its own function, and churns millions of allocations that are all freed.
 *
 *   leaker [--wait] [--rounds N] [--no-pvalloc]
 *
 * --no-pvalloc skips leak_pvalloc, for cross-checking under valgrind (which aborts on
 * pvalloc); --rounds sets the churn's iterations (10 allocations each).
 *
 * Protocol (shared by every test target): with --wait, print "ready" and wait for one
 * line on stdin before working. Then print one truth line per leaking function, a
 * "churn" line, and "done". With --wait, then wait for EOF on stdin; exit 0.
 *
 * Each truth line is computed from the calls actually made: the bytes are the sizes
 * requested by the call that produced each still-held block.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noipa))

/* The leaked blocks stay reachable from here, so no compiler can drop the calls. */
#define MAX_KEPT 1024
void *kept[MAX_KEPT];
static size_t kept_count;

struct truth {
    const char *function;
    size_t bytes;
    size_t count;
};

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

static void die(const char *what) {
    fprintf(stderr, "leaker: %s: %s\n", what, strerror(errno));
    exit(1);
}

/* Keeps block `p` of `size` requested bytes as a leak of function `which`. */
static void keep(int which, void *p, size_t size) {
    if (p == NULL)
        die(truths[which].function);
    if (kept_count == MAX_KEPT) {
        fprintf(stderr, "leaker: too many leaked blocks\n");
        exit(1);
    }
    kept[kept_count++] = p;
    truths[which].bytes += size;
    truths[which].count += 1;
}

NOINLINE void leak_malloc(int count, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_MALLOC, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_CALLOC, calloc(nmemb, size), nmemb * size);
}

/* The malloc'd block is consumed by realloc: the leak is the realloc's. */
NOINLINE void leak_realloc_grow(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = malloc(from);
        if (p == NULL)
            die("malloc");
        memset(p, 0x11, from);
        keep(T_REALLOC_GROW, realloc(p, to), to);
    }
}

NOINLINE void leak_realloc_shrink(int count, size_t from, size_t to) {
    for (int i = 0; i < count; i++) {
        void *p = malloc(from);
        if (p == NULL)
            die("malloc");
        memset(p, 0x22, from);
        keep(T_REALLOC_SHRINK, realloc(p, to), to);
    }
}

NOINLINE void leak_reallocarray(int count, size_t nmemb, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_REALLOCARRAY, reallocarray(NULL, nmemb, size), nmemb * size);
}

NOINLINE void leak_posix_memalign(int count, size_t alignment, size_t size) {
    for (int i = 0; i < count; i++) {
        void *p = NULL;
        int err = posix_memalign(&p, alignment, size);
        if (err != 0) {
            errno = err;
            die("posix_memalign");
        }
        keep(T_POSIX_MEMALIGN, p, size);
    }
}

NOINLINE void leak_aligned_alloc(int count, size_t alignment, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_ALIGNED_ALLOC, aligned_alloc(alignment, size), size);
}

NOINLINE void leak_memalign(int count, size_t alignment, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_MEMALIGN, memalign(alignment, size), size);
}

NOINLINE void leak_valloc(int count, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_VALLOC, valloc(size), size);
}

NOINLINE void leak_pvalloc(int count, size_t size) {
    for (int i = 0; i < count; i++)
        keep(T_PVALLOC, pvalloc(size), size);
}

struct churn_stats {
    unsigned long allocations; /* calls that returned a new block */
    unsigned long frees;       /* free() calls on a block */
    unsigned long failed;      /* calls that returned NULL for lack of memory */
};

static struct churn_stats stats;

/* Read through volatiles so the compiler keeps these calls as written (it would turn
 * realloc(NULL, n) into malloc(n) and drop free(NULL)). */
static volatile size_t huge = SIZE_MAX / 2;
static void *volatile null_block = NULL;

static void *must(void *p) {
    if (p == NULL)
        die("churn");
    stats.allocations++;
    return p;
}

static void release(void *p) {
    free(p);
    stats.frees++;
}

/* Millions of allocations through every allocator, all freed: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */

        char *p = must(malloc(size));
        p[0] = (char)i;
        release(p);

        release(must(calloc(1 + i % 32, 8)));

        /* A realloc chain: each step frees the previous block. */
        p = must(malloc(16));
        p = must(realloc(p, 64 + i % 64));
        p = must(realloc(p, 200 + i % 300));
        p = must(realloc(p, 24));
        release(p);

        release(must(realloc(null_block, size)));

        /* realloc(p, 0) frees p (glibc returns NULL). */
        p = must(malloc(size));
        p = realloc(p, 0);
        if (p != NULL)
            release(p);

        void *aligned = NULL;
        if (posix_memalign(&aligned, 32, size) != 0)
            die("posix_memalign");
        stats.allocations++;
        release(aligned);

        release(must(aligned_alloc(64, 128)));

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

static void wait_line(void) {
    char line[256];
    if (fgets(line, sizeof line, stdin) == NULL) {
        fprintf(stderr, "leaker: stdin closed before go\n");
        exit(1);
    }
}

static void wait_eof(void) {
    char line[256];
    while (fgets(line, sizeof line, stdin) != NULL) {
    }
}

int main(int argc, char **argv) {
    int wait = 0;
    int with_pvalloc = 1;
    unsigned long rounds = 350000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            rounds = strtoul(argv[++i], NULL, 10);
        } else if (strcmp(argv[i], "--no-pvalloc") == 0) {
            with_pvalloc = 0;
        } else {
            fprintf(stderr, "usage: leaker [--wait] [--rounds N] [--no-pvalloc]\n");
            return 2;
        }
    }
    if (wait) {
        printf("ready\n");
        fflush(stdout);
        wait_line();
    }

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
    if (with_pvalloc)
        leak_pvalloc(10, 321);
    churn(rounds);

    for (int i = 0; i < T_COUNT; i++)
        printf("{\"truth\":{\"function\":\"%s\",\"bytes\":%zu,\"count\":%zu}}\n",
               truths[i].function, truths[i].bytes, truths[i].count);
    printf("{\"churn\":{\"function\":\"churn\",\"allocations\":%lu,\"frees\":%lu,"
           "\"failed_allocations\":%lu}}\n",
           stats.allocations, stats.frees, stats.failed);
    printf("done\n");
    fflush(stdout);

    if (wait)
        wait_eof();
    return 0;
}
