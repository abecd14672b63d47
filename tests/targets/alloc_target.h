/*
 * What the allocator targets (jemalloc_linked, tcmalloc_new, mimalloc_linked, prefixed,
 * static_glibc) share: the protocol of every test target (see leaker.c) and the truth
 * bookkeeping. C and C++.
 *
 *   TARGET [--wait] [--rounds N]
 *
 * With --wait: print "ready", wait for one line on stdin, work, print one truth line per
 * leaking function, a "churn" line and "done", then wait for EOF on stdin; exit 0.
 *
 * A truth counts, for each block still held, the size the call that produced it asked
 * for (nmemb * size for calloc; the new size for realloc).
 */
#ifndef LEAKBPF_ALLOC_TARGET_H
#define LEAKBPF_ALLOC_TARGET_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noipa))

/* The program's name in messages; each target defines it. */
extern const char *const target_name;

struct truth {
    const char *function;
    size_t bytes;
    size_t count;
};

/* The leaked blocks stay reachable from here, so no compiler can drop the calls. */
#define MAX_KEPT 1024
void *kept[MAX_KEPT];
static size_t kept_count;

/* What a churn function did: every block it got, it gave back. */
struct churn_stats {
    unsigned long allocations; /* calls that returned a new block */
    unsigned long frees;       /* calls of a free function (free, delete, dallocx...) */
};

static struct churn_stats stats;

static inline void die(const char *what) {
    fprintf(stderr, "%s: %s: %s\n", target_name, what, strerror(errno));
    exit(1);
}

/* Keeps block `p` of `size` requested bytes as a leak of `t`. */
static inline void keep(struct truth *t, void *p, size_t size) {
    if (p == NULL)
        die(t->function);
    if (kept_count == MAX_KEPT) {
        fprintf(stderr, "%s: too many leaked blocks\n", target_name);
        exit(1);
    }
    kept[kept_count++] = p;
    t->bytes += size;
    t->count += 1;
}

/* A block the churn got: counted, checked. */
static inline void *got(void *p) {
    if (p == NULL)
        die("churn");
    stats.allocations++;
    return p;
}

/* Parses [--wait] [--rounds N]; returns whether to wait. */
static inline int parse_args(int argc, char **argv, unsigned long *rounds) {
    int wait = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc) {
            *rounds = strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: %s [--wait] [--rounds N]\n", target_name);
            exit(2);
        }
    }
    return wait;
}

/* With --wait: "ready", then one line on stdin. */
static inline void await_go(int wait) {
    if (!wait)
        return;
    printf("ready\n");
    fflush(stdout);
    char line[256];
    if (fgets(line, sizeof line, stdin) == NULL) {
        fprintf(stderr, "%s: stdin closed before go\n", target_name);
        exit(1);
    }
}

/* The truth lines, the churn line, "done"; with --wait, then EOF on stdin. */
static inline void report_and_wait(const struct truth *truths, size_t n, int wait) {
    for (size_t i = 0; i < n; i++)
        printf("{\"truth\":{\"function\":\"%s\",\"bytes\":%zu,\"count\":%zu}}\n",
               truths[i].function, truths[i].bytes, truths[i].count);
    printf("{\"churn\":{\"function\":\"churn\",\"allocations\":%lu,\"frees\":%lu}}\n",
           stats.allocations, stats.frees);
    printf("done\n");
    fflush(stdout);
    if (wait) {
        char line[256];
        while (fgets(line, sizeof line, stdin) != NULL) {
        }
    }
}

#endif
