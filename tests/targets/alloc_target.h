/*
 * What the C and C++ test targets share: the protocol of every test target, the truth
 * bookkeeping, and the bodies of the leaking functions several of them have.
 *
 *   TARGET [--wait] [--rounds N]      (some targets: another option; see parse_options)
 *
 * Protocol: with --wait, print "ready" and wait for one line on stdin before working.
 * Then print one truth line per leaking function, a "churn" line, and "done". With
 * --wait, then wait for EOF on stdin; exit 0.
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
#include <unistd.h>

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
    unsigned long failed;      /* calls that returned NULL for lack of memory */
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

/* A block the churn got is given back through free. */
static inline void release(void *p) {
    free(p);
    stats.frees++;
}

/* Parses [--wait] [NUMBER N] [FLAG]: NUMBER (if not NULL) sets *value, FLAG (if not NULL)
 * sets *flag_set to 1. Returns whether to wait. */
static inline int parse_options(int argc, char **argv, const char *number,
                                unsigned long *value, const char *flag, int *flag_set) {
    int wait = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (number != NULL && strcmp(argv[i], number) == 0 && i + 1 < argc) {
            *value = strtoul(argv[++i], NULL, 10);
        } else if (flag != NULL && strcmp(argv[i], flag) == 0) {
            *flag_set = 1;
        } else {
            fprintf(stderr, "usage: %s [--wait]", target_name);
            if (number != NULL)
                fprintf(stderr, " [%s N]", number);
            if (flag != NULL)
                fprintf(stderr, " [%s]", flag);
            fprintf(stderr, "\n");
            exit(2);
        }
    }
    return wait;
}

/* Parses [--wait] [--rounds N]; returns whether to wait. */
static inline int parse_args(int argc, char **argv, unsigned long *rounds) {
    return parse_options(argc, argv, "--rounds", rounds, NULL, NULL);
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

/* One truth line per leaking function. */
static inline void print_truths(const struct truth *truths, size_t n) {
    for (size_t i = 0; i < n; i++)
        printf("{\"truth\":{\"function\":\"%s\",\"bytes\":%zu,\"count\":%zu}}\n",
               truths[i].function, truths[i].bytes, truths[i].count);
}

/* The churn line, for the churn function `function`; with `with_failed`, it also gives
 * stats.failed as failed_allocations. */
static inline void print_churn(const char *function, int with_failed) {
    printf("{\"churn\":{\"function\":\"%s\",\"allocations\":%lu,\"frees\":%lu",
           function, stats.allocations, stats.frees);
    if (with_failed)
        printf(",\"failed_allocations\":%lu", stats.failed);
    printf("}}\n");
}

/*
 * For targets whose work is spread over several processes (forks, execs), where every
 * process prints its own lines on the shared stdout: each line names its process. Each
 * is written at once by the fflush that follows it (a pipe write under PIPE_BUF is never
 * interleaved with another process's).
 */

/* The truth of `t`, with this process's pid and its parent's. */
static inline void print_process_truth(const struct truth *t) {
    printf("{\"truth\":{\"function\":\"%s\",\"bytes\":%zu,\"count\":%zu,\"pid\":%ld,"
           "\"ppid\":%ld}}\n",
           t->function, t->bytes, t->count, (long)getpid(), (long)getppid());
    fflush(stdout);
}

/* The churn line of `function` (stats since this process began, or forked), with this
 * process's pid. */
static inline void print_process_churn(const char *function) {
    printf("{\"churn\":{\"function\":\"%s\",\"allocations\":%lu,\"frees\":%lu,\"pid\":%ld}}\n",
           function, stats.allocations, stats.frees, (long)getpid());
    fflush(stdout);
}

/* The path of the program `name` in this program's directory (NULL: this program), into
 * `path` (4096 bytes). */
static inline void program_beside(const char *name, char path[4096]) {
    ssize_t length = readlink("/proc/self/exe", path, 4096 - 1);
    if (length < 0)
        die("readlink /proc/self/exe");
    path[length] = '\0';
    if (name != NULL) {
        char *slash = strrchr(path, '/');
        size_t dir = slash == NULL ? 0 : (size_t)(slash - path) + 1;
        if (dir + strlen(name) >= 4096) {
            fprintf(stderr, "%s: path too long\n", target_name);
            exit(1);
        }
        strcpy(path + dir, name);
    }
}

/* Replaces this process's image with the program `name` in this program's directory
 * (NULL: this program again), given `argv`. Returns only to fail. */
static inline void exec_beside(const char *name, char *const argv[]) {
    char path[4096];
    program_beside(name, path);
    fflush(stdout);
    execv(path, argv);
    die(path);
}

/* "done"; with --wait, then EOF on stdin. */
static inline void finish(int wait) {
    printf("done\n");
    fflush(stdout);
    if (wait) {
        char line[256];
        while (fgets(line, sizeof line, stdin) != NULL) {
        }
    }
}

/* The truth lines, the churn line, "done"; with --wait, then EOF on stdin. */
static inline void report_and_wait(const struct truth *truths, size_t n, int wait) {
    print_truths(truths, n);
    print_churn("churn", 0);
    finish(wait);
}

/*
 * The bodies of the leaking functions several targets share. Each leaking function stays
 * a noinline function of its own that uses one of these; they are macros, not inline
 * functions, because leakbpf names inlined functions too (from the debug info, as frames
 * of their own): the allocator's direct caller must be the leaking function itself.
 */

/* `count` times: keeps the block `call` returns as a leak of `size` bytes of `t`. */
#define LEAK_EACH(t, count, call, size)                                                    \
    do {                                                                                   \
        for (int i_ = 0; i_ < (count); i_++)                                               \
            keep((t), (call), (size));                                                     \
    } while (0)

/* `count` times: a block of `from` bytes from `alloc`, filled with `fill`, consumed by
 * `resize` to `to` bytes (alloc's and resize's API: malloc's and realloc's). The leak is
 * the resize's. */
#define LEAK_RESIZED(t, count, alloc, resize, from, to, fill)                              \
    do {                                                                                   \
        for (int i_ = 0; i_ < (count); i_++) {                                             \
            void *p_ = alloc(from);                                                        \
            if (p_ == NULL)                                                                \
                die(#alloc);                                                               \
            memset(p_, (fill), (from));                                                    \
            keep((t), resize(p_, (to)), (to));                                             \
        }                                                                                  \
    } while (0)

/* `count` times: keeps a block from posix_memalign(alignment, size). */
#define LEAK_POSIX_MEMALIGN(t, count, alignment, size)                                     \
    do {                                                                                   \
        for (int i_ = 0; i_ < (count); i_++) {                                             \
            void *p_ = NULL;                                                               \
            int err_ = posix_memalign(&p_, (alignment), (size));                           \
            if (err_ != 0) {                                                               \
                errno = err_;                                                              \
                die("posix_memalign");                                                     \
            }                                                                              \
            keep((t), p_, (size));                                                         \
        }                                                                                  \
    } while (0)

/* A churn round's blocks from malloc, calloc and a realloc chain whose middle step is
 * `mid` + i % 300 bytes, all given back (churn bodies: allocations made here are the
 * churn's own). */
#define CHURN_MALLOC_CALLOC_REALLOC(i, size, mid)                                          \
    do {                                                                                   \
        char *p_ = (char *)got(malloc(size));                                              \
        p_[0] = (char)(i);                                                                 \
        release(p_);                                                                       \
                                                                                           \
        release(got(calloc(1 + (i) % 32, 8)));                                             \
                                                                                           \
        /* A realloc chain: each step frees the previous block. */                         \
        p_ = (char *)got(malloc(16));                                                      \
        p_ = (char *)got(realloc(p_, 64 + (i) % 64));                                      \
        p_ = (char *)got(realloc(p_, (mid) + (i) % 300));                                  \
        p_ = (char *)got(realloc(p_, 24));                                                 \
        release(p_);                                                                       \
    } while (0)

/* A churn round's block from posix_memalign(32, size), given back. */
#define CHURN_POSIX_MEMALIGN(size)                                                         \
    do {                                                                                   \
        void *aligned_ = NULL;                                                             \
        if (posix_memalign(&aligned_, 32, (size)) != 0)                                    \
            die("posix_memalign");                                                         \
        stats.allocations++;                                                               \
        release(aligned_);                                                                 \
    } while (0)

#endif
