/*
 * Several memory patterns in one process at once, as a real service has them, each in
 * its own function, every 5 ms for --seconds S (12 by default):
 *
 *   leak_steady    640 B leaked per tick: a steady leak of 128,000 B/s
 *   leak_stepped   40 blocks of 1000 B leaked at once every 3 s: a stepped leak
 *   cache_put      256 B entries in a cache of 300, the oldest evicted once it is full:
 *                  it fills in 1.5 s, then holds while its entries turn over
 *   churn          50 blocks of 100 B allocated and freed within the tick
 *
 * With --mmap instead: 1 MiB of anonymous memory mapped and touched every 100 ms and
 * never unmapped, nothing leaked through malloc: RSS grows, the heap does not.
 *
 * Prints, as the other targets (see alloc_target.h), a truth line per leaking function;
 * the steady leak's line also has its true rate, measured from its first to its last
 * leak; then "done". No --wait: it is started by leakbpf.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define NOINLINE __attribute__((noinline, noipa))

#define TICK_NS 5000000L
#define STEADY_SIZE 640
#define STEP_EVERY_TICKS 600
#define STEP_BLOCKS 40
#define STEP_SIZE 1000
#define CACHE_ENTRIES 300
#define CACHE_SIZE 256
#define CHURN_BLOCKS 50
#define CHURN_SIZE 100
#define MMAP_EVERY_TICKS 20
#define MMAP_SIZE (1 << 20)

static void *cache[CACHE_ENTRIES];
static size_t cache_next, cache_used;
/* Leaked blocks stay reachable from these lists, so no compiler drops the calls. */
static void **kept;
static size_t kept_count, kept_room;
static size_t steady_bytes, steady_count, stepped_bytes, stepped_count;

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static void keep(void *p) {
    if (p == NULL) {
        perror("patterns");
        exit(1);
    }
    if (kept_count == kept_room) {
        kept_room = kept_room ? 2 * kept_room : 4096;
        /* Through mmap, so the list's own growth is no heap pattern of its own. */
        void **room = mmap(NULL, kept_room * sizeof *kept, PROT_READ | PROT_WRITE,
                           MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (room == MAP_FAILED) {
            perror("patterns: mmap");
            exit(1);
        }
        if (kept)
            memcpy(room, kept, kept_count * sizeof *kept);
        kept = room;
    }
    kept[kept_count++] = p;
}

NOINLINE void leak_steady(void) {
    keep(malloc(STEADY_SIZE));
    steady_bytes += STEADY_SIZE;
    steady_count++;
}

NOINLINE void leak_stepped(void) {
    for (int i = 0; i < STEP_BLOCKS; i++)
        keep(malloc(STEP_SIZE));
    stepped_bytes += STEP_BLOCKS * STEP_SIZE;
    stepped_count += STEP_BLOCKS;
}

NOINLINE void cache_put(void) {
    if (cache_used == CACHE_ENTRIES)
        free(cache[cache_next]);
    else
        cache_used++;
    cache[cache_next] = malloc(CACHE_SIZE);
    if (cache[cache_next] == NULL)
        exit(1);
    memset(cache[cache_next], 1, CACHE_SIZE);
    cache_next = (cache_next + 1) % CACHE_ENTRIES;
}

NOINLINE void churn(void) {
    void *blocks[CHURN_BLOCKS];
    for (int i = 0; i < CHURN_BLOCKS; i++) {
        blocks[i] = malloc(CHURN_SIZE);
        if (blocks[i] == NULL)
            exit(1);
    }
    for (int i = 0; i < CHURN_BLOCKS; i++)
        free(blocks[i]);
}

NOINLINE void grow_mapped(void) {
    void *p = mmap(NULL, MMAP_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("patterns: mmap");
        exit(1);
    }
    memset(p, 1, MMAP_SIZE);
}

int main(int argc, char **argv) {
    double seconds = 12;
    int mapped = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--seconds") == 0 && i + 1 < argc)
            seconds = atof(argv[++i]);
        else if (strcmp(argv[i], "--mmap") == 0)
            mapped = 1;
        else {
            fprintf(stderr, "usage: patterns [--seconds S] [--mmap]\n");
            return 2;
        }
    }
    long ticks = (long)(seconds * 1e9 / TICK_NS);
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    double first_leak = 0, last_leak = 0;
    for (long tick = 0; tick < ticks; tick++) {
        if (mapped) {
            if (tick % MMAP_EVERY_TICKS == 0)
                grow_mapped();
            churn();
        } else {
            leak_steady();
            if (tick == 0)
                first_leak = now_s();
            last_leak = now_s();
            if (tick % STEP_EVERY_TICKS == 100)
                leak_stepped();
            cache_put();
            churn();
        }
        next.tv_nsec += TICK_NS;
        if (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    if (!mapped) {
        /* Per the leaks' own clock: bytes leaked after the first, over the time between. */
        double rate = (double)(steady_bytes - STEADY_SIZE) / (last_leak - first_leak);
        printf("{\"truth\":{\"function\":\"leak_steady\",\"bytes\":%zu,\"count\":%zu,"
               "\"bytes_per_s\":%.1f}}\n",
               steady_bytes, steady_count, rate);
        printf("{\"truth\":{\"function\":\"leak_stepped\",\"bytes\":%zu,\"count\":%zu}}\n",
               stepped_bytes, stepped_count);
        printf("{\"truth\":{\"function\":\"cache_put\",\"bytes\":%zu,\"count\":%zu}}\n",
               cache_used * CACHE_SIZE, cache_used);
    }
    printf("done\n");
    fflush(stdout);
    return 0;
}
