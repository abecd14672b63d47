/* The agent's scale test: --allocs N blocks (1,000,000) kept outstanding over --stacks K
 * distinct call stacks (10,000). Block i is allocated at the bottom of a 14-deep
 * recursion whose level d calls the next through one of two call sites, chosen by bit d
 * of i % K: 2^14 = 16384 distinct paths, K of them used. Built with -O1 and frame
 * pointers, so each path is its own stack. Prints allocated, then holds every block. */
#include <stdint.h>

#include "bench_protocol.h"

#define DEPTH 14
#define NOINLINE __attribute__((noinline))

static volatile uintptr_t via_low, via_high;

static NOINLINE void *level(uint32_t path, int depth) {
    void *block;
    if (depth == DEPTH) return malloc(24 + (path & 7) * 8);
    if ((path >> depth) & 1) {
        block = level(path, depth + 1);
        via_high = (uintptr_t)block;
    } else {
        block = level(path, depth + 1);
        via_low = (uintptr_t)block;
    }
    return block;
}

int main(int argc, char **argv) {
    const uint32_t allocs = (uint32_t)bench_arg(argc, argv, "--allocs", 1000000);
    const uint32_t stacks = (uint32_t)bench_arg(argc, argv, "--stacks", 10000);
    void **blocks = malloc(sizeof(void *) * allocs);
    if (!blocks || stacks == 0 || stacks > (1u << DEPTH)) return 2;

    bench_ready();
    const double start = bench_now();
    for (uint32_t i = 0; i < allocs; ++i) blocks[i] = level(i % stacks, 0);
    const double elapsed = bench_now() - start;
    printf("allocated %u\nstacks %u\nseconds %.6f\n", allocs, stacks, elapsed);
    bench_done();
    for (uint32_t i = 0; i < allocs; ++i) free(blocks[i]);
    free(blocks);
    return 0;
}
