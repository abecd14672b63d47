/* The sampled estimate's leak: --blocks N blocks of --size S bytes leaked at one call site
 * (leak), each batch of them among --churn C malloc/free pairs per block of 32 to 255 bytes
 * (churn) that all go back. Prints the truth: leaked_bytes, leaked_blocks, and seconds,
 * the time it took. The blocks stay reachable until the program exits. */
#include <stdint.h>

#include "bench_protocol.h"

#define BATCH 1024
#define NOINLINE __attribute__((noinline, noclone))

static void *volatile sink;

/* Leaks `count` blocks of `size` bytes into `kept`. */
static NOINLINE void leak(void **kept, uint64_t count, size_t size) {
    for (uint64_t i = 0; i < count; ++i) {
        char *p = malloc(size);
        if (p == NULL) {
            perror("sampled_leak: malloc");
            exit(1);
        }
        p[0] = (char)i;
        kept[i] = p;
    }
}

static NOINLINE void churn(uint64_t pairs) {
    for (uint64_t i = 0; i < pairs; ++i) {
        char *p = malloc(32 + i % 224);
        p[0] = (char)i;
        sink = p;
        free(p);
    }
}

int main(int argc, char **argv) {
    const uint64_t blocks = (uint64_t)bench_arg(argc, argv, "--blocks", 390625);
    const size_t size = (size_t)bench_arg(argc, argv, "--size", 256);
    const uint64_t churn_per_block = (uint64_t)bench_arg(argc, argv, "--churn", 4);
    /* Allocated before the tool attaches: it is no part of what the tool sees. */
    void **kept = calloc(blocks, sizeof *kept);
    if (kept == NULL) {
        perror("sampled_leak: calloc");
        return 1;
    }

    bench_ready();
    const double start = bench_now();
    for (uint64_t done = 0; done < blocks; done += BATCH) {
        const uint64_t count = blocks - done < BATCH ? blocks - done : BATCH;
        leak(kept + done, count, size);
        churn(count * churn_per_block);
    }
    const double elapsed = bench_now() - start;
    printf("leaked_bytes %llu\nleaked_blocks %llu\nseconds %.6f\n",
           (unsigned long long)(blocks * size), (unsigned long long)blocks, elapsed);
    bench_done();
    return 0;
}
