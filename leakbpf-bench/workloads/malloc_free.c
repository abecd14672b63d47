/* Workload (a): malloc/free pairs of 16 to 256 bytes, as fast as possible, for
 * --seconds S (checking the clock every 1024 pairs). Prints ns_per_pair. With --depth D
 * the loop runs D calls deep (a recursion before it), so every stack a tool walks is that
 * much deeper: the cost of a deep stack. */
#include <stdint.h>

#include "bench_protocol.h"

#define SIZES 1024
/* noclone too: a specialised clone of the recursion could fold its levels. */
#define NOINLINE __attribute__((noinline, noclone))

static void *volatile sink;
static volatile int returned_from;
static size_t sizes[SIZES];

/* The timed loop: the pairs made in `seconds`; the time it took in *elapsed. */
static NOINLINE uint64_t timed_loop(double seconds, double *elapsed) {
    const double start = bench_now();
    const double until = start + seconds;
    uint64_t pairs = 0;
    double now;
    do {
        for (int i = 0; i < SIZES; ++i) {
            char *p = malloc(sizes[i]);
            p[0] = (char)i;
            sink = p;
            free(p);
        }
        pairs += SIZES;
        now = bench_now();
    } while (now < until);
    *elapsed = now - start;
    return pairs;
}

/* `depth` frames of itself, then the loop. */
static NOINLINE uint64_t descend(int depth, double seconds, double *elapsed) {
    const uint64_t pairs =
        depth <= 1 ? timed_loop(seconds, elapsed) : descend(depth - 1, seconds, elapsed);
    /* Work after the call: it stays a call, never a jump. */
    returned_from = depth;
    return pairs;
}

int main(int argc, char **argv) {
    const double seconds = bench_arg(argc, argv, "--seconds", 1.0);
    const int depth = (int)bench_arg(argc, argv, "--depth", 0);
    uint32_t x = 12345;
    for (int i = 0; i < SIZES; ++i) {
        x = x * 1103515245u + 12345u;
        sizes[i] = 16 + (x >> 8) % 241; /* 16..256 */
    }

    bench_ready();
    double elapsed;
    const uint64_t pairs =
        depth > 0 ? descend(depth, seconds, &elapsed) : timed_loop(seconds, &elapsed);
    printf("ns_per_pair %.3f\npairs %llu\nseconds %.6f\n", elapsed * 1e9 / (double)pairs,
           (unsigned long long)pairs, elapsed);
    bench_done();
    return 0;
}
