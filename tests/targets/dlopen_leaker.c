/*
 * dlopen_leaker: once told to go, loads libdlopened.so (next to it) with dlopen, leaks
 * through it at once (leak_at_once: its code mapped an instant before), waits, and leaks
 * through it again (leak_later: long after). A stack walk that reaches code whose unwind
 * table is not ready yet must be cut there, never continue into wrong frames; once the
 * table is ready, the stacks are whole.
 *
 *   dlopen_leaker [--wait] [--rounds N]
 *
 * With --wait, "paused" after leak_later, then a line on stdin, before the truth lines.
 * Protocol and truth: see alloc_target.h.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <time.h>

#include "alloc_target.h"

const char *const target_name = "dlopen_leaker";

enum { T_AT_ONCE, T_LATER, T_COUNT };

static struct truth truths[T_COUNT] = {{"leak_at_once", 0, 0}, {"leak_later", 0, 0}};

static void *(*dlopened_malloc)(size_t);

NOINLINE void leak_at_once(int count, size_t size) {
    LEAK_EACH(&truths[T_AT_ONCE], count, dlopened_malloc(size), size);
}

NOINLINE void leak_later(int count, size_t size) {
    LEAK_EACH(&truths[T_LATER], count, dlopened_malloc(size), size);
}

int main(int argc, char **argv) {
    unsigned long rounds = 0;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    char path[4096];
    program_beside("libdlopened.so", path);
    void *library = dlopen(path, RTLD_NOW);
    if (library == NULL) {
        fprintf(stderr, "dlopen_leaker: %s\n", dlerror());
        return 1;
    }
    dlopened_malloc = (void *(*)(size_t))dlsym(library, "dlopened_malloc");
    if (dlopened_malloc == NULL) {
        fprintf(stderr, "dlopen_leaker: %s\n", dlerror());
        return 1;
    }
    leak_at_once(40, 1234);
    /* Long enough for any agent to have read the new mapping's table. */
    struct timespec pause = {1, 500 * 1000 * 1000};
    nanosleep(&pause, NULL);
    leak_later(30, 4321);
    /* With --wait, "paused" and a line on stdin: the test waits meanwhile for a report
     * that names leak_later's stack, new an instant ago (a process traced by pid is not
     * held at its exit, so a stack first seen just before it may go unnamed). */
    if (wait) {
        printf("paused\n");
        fflush(stdout);
        char line[256];
        if (fgets(line, sizeof line, stdin) == NULL) {
            fprintf(stderr, "dlopen_leaker: stdin closed while paused\n");
            return 1;
        }
    }
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
