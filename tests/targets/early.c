/*
 * early: leaks before main runs (from a constructor) and in main's very first
 * statement, which only a tracer attached before the program starts can see.
 *
 *   early [--wait]
 *
 * Protocol and truth: see alloc_target.h, except that there is no "ready"/go handshake
 * (the leaks happen before anything could be read) and no churn line: --wait only makes
 * it wait for EOF on stdin after "done".
 */
#include "alloc_target.h"

const char *const target_name = "early";

enum { T_CTOR, T_MAIN, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"early_ctor_leak", 0, 0},
    {"early_main_leak", 0, 0},
};

/* Runs before main, as the dynamic loader initialises the program. */
__attribute__((constructor)) NOINLINE void early_ctor_leak(void) {
    size_t size = 1717;
    keep(&truths[T_CTOR], malloc(size), size);
}

NOINLINE void early_main_leak(size_t size) {
    keep(&truths[T_MAIN], malloc(size), size);
}

int main(int argc, char **argv) {
    early_main_leak(4242);

    int wait = parse_options(argc, argv, NULL, NULL, NULL, NULL);
    print_truths(truths, T_COUNT);
    finish(wait);
    return 0;
}
