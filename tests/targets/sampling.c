/*
 * sampling: what --sample-bytes estimates, against the exact truth. It leaks many small
 * blocks (each sampled with a small chance), a few large ones (each sampled for sure),
 * and blocks of every size between, among a churn of short-lived blocks that all go
 * back. Built as distributions build (-O2, no frame pointers).
 *
 *   sampling [--wait] [--rounds N]   (per round: 1024 blocks of 256 B at leak_small,
 *                                     32 of 8 to 16 KiB at leak_mixed, one of 1 MiB at
 *                                     leak_large, 4096 pairs at churn; 256 rounds)
 *
 * Protocol and truth: see alloc_target.h. The blocks are kept in static arrays, so the
 * program allocates nothing else.
 */
#include "alloc_target.h"

const char *const target_name = "sampling";

#define SMALL_PER_ROUND 1024
#define SMALL_SIZE 256
#define MIXED_PER_ROUND 32
#define LARGE_SIZE ((size_t)1 << 20)
#define CHURN_PER_ROUND 4096
#define MAX_ROUNDS 1024

static void *small_blocks[MAX_ROUNDS * SMALL_PER_ROUND];
static void *mixed_blocks[MAX_ROUNDS * MIXED_PER_ROUND];
static void *large_blocks[MAX_ROUNDS];
static size_t small_kept, mixed_kept, large_kept;

/* Each leaks into its own array: the work after the call keeps its frame (no tail call). */
NOINLINE void leak_small(struct truth *t) {
    for (int i = 0; i < SMALL_PER_ROUND; i++) {
        void *p = malloc(SMALL_SIZE);
        if (p == NULL)
            die("leak_small");
        small_blocks[small_kept++] = p;
        t->bytes += SMALL_SIZE;
        t->count++;
    }
}

NOINLINE void leak_mixed(struct truth *t, unsigned long round) {
    for (int i = 0; i < MIXED_PER_ROUND; i++) {
        size_t size = 8192 + (round * MIXED_PER_ROUND + i) * 7919 % 8192;
        void *p = malloc(size);
        if (p == NULL)
            die("leak_mixed");
        mixed_blocks[mixed_kept++] = p;
        t->bytes += size;
        t->count++;
    }
}

NOINLINE void leak_large(struct truth *t) {
    void *p = malloc(LARGE_SIZE);
    if (p == NULL)
        die("leak_large");
    large_blocks[large_kept++] = p;
    t->bytes += LARGE_SIZE;
    t->count++;
}

NOINLINE void churn(unsigned long round) {
    for (int i = 0; i < CHURN_PER_ROUND; i++)
        release(got(malloc(32 + (round + i) % 224)));
}

int main(int argc, char **argv) {
    unsigned long rounds = 256;
    int wait = parse_args(argc, argv, &rounds);
    if (rounds > MAX_ROUNDS) {
        fprintf(stderr, "sampling: at most %d rounds\n", MAX_ROUNDS);
        return 2;
    }
    await_go(wait);
    struct truth truths[] = {{"leak_small", 0, 0}, {"leak_mixed", 0, 0}, {"leak_large", 0, 0}};
    for (unsigned long round = 0; round < rounds; round++) {
        leak_small(&truths[0]);
        churn(round);
        leak_mixed(&truths[1], round);
        leak_large(&truths[2]);
    }
    report_and_wait(truths, 3, wait);
    return 0;
}
