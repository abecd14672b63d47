/* The bench protocol shared by the workloads (see leakbpf-bench/src/workloads.rs):
 *
 *   workload prints "ready PID", waits for a line on stdin ("go"), runs its timed loop,
 *   prints "KEY VALUE" lines with its own measurements and "done", then waits for EOF on
 *   stdin before it exits, so the harness can read its CPU time while it is idle.
 *
 * Only the timed loop is measured: the start-up of a tool that launches the program
 * (heaptrack, valgrind) or attaches to it (leakbpf, memleak, bpftrace) is excluded. */
#ifndef BENCH_PROTOCOL_H
#define BENCH_PROTOCOL_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static inline double bench_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Prints "ready PID" and blocks until the go line; exits if stdin closes first. */
static inline void bench_ready(void) {
    char line[64];
    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    if (!fgets(line, sizeof line, stdin)) exit(1);
}

/* After the results: "done", then idle until stdin reaches EOF. */
static inline void bench_done(void) {
    char line[64];
    printf("done\n");
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
    }
}

/* The value after `name` in argv ("--name VALUE"), or `fallback`. */
static inline double bench_arg(int argc, char **argv, const char *name, double fallback) {
    for (int i = 1; i + 1 < argc; ++i)
        if (strcmp(argv[i], name) == 0) return strtod(argv[i + 1], NULL);
    return fallback;
}

#endif
