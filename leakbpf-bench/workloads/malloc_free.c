/* Workload (a): malloc/free pairs of 16 to 256 bytes, as fast as possible, for
 * --seconds S (checking the clock every 1024 pairs). Prints ns_per_pair. */
#include <stdint.h>

#include "bench_protocol.h"

#define SIZES 1024

static void *volatile sink;

int main(int argc, char **argv) {
    const double seconds = bench_arg(argc, argv, "--seconds", 1.0);
    static size_t sizes[SIZES];
    uint32_t x = 12345;
    for (int i = 0; i < SIZES; ++i) {
        x = x * 1103515245u + 12345u;
        sizes[i] = 16 + (x >> 8) % 241; /* 16..256 */
    }

    bench_ready();
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

    const double elapsed = now - start;
    printf("ns_per_pair %.3f\npairs %llu\nseconds %.6f\n", elapsed * 1e9 / (double)pairs,
           (unsigned long long)pairs, elapsed);
    bench_done();
    return 0;
}
