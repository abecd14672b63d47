/*
 * stripped: the program the Makefile strips (strip --strip-all, frame pointers kept),
 * alone, with a .gnu_debuglink to a debug file next to it, and with one reachable only
 * by build-id. Leaks through malloc and calloc; churns blocks, all freed.
 *
 *   stripped [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h. Also prints, for file:line checks, the source
 * line of each leaking function's allocating call:
 * {"lines":{"leak_malloc":N,"leak_calloc":M}}.
 */
#include "alloc_target.h"

const char *const target_name = "stripped";

enum { T_MALLOC, T_CALLOC, T_COUNT };

static struct truth truths[T_COUNT] = {{"leak_malloc", 0, 0}, {"leak_calloc", 0, 0}};

/* The line of each leaking function's LEAK_EACH: its allocator calls carry that line. */
static int call_lines[T_COUNT];

NOINLINE void leak_malloc(int count, size_t size) {
    call_lines[T_MALLOC] = __LINE__ + 1;
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

NOINLINE void leak_calloc(int count, size_t nmemb, size_t size) {
    call_lines[T_CALLOC] = __LINE__ + 1;
    LEAK_EACH(&truths[T_CALLOC], count, calloc(nmemb, size), nmemb * size);
}

/* Allocations given back: none may be reported. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++)
        CHURN_MALLOC_CALLOC_REALLOC(i, 16 + i % 241, 200);
}

int main(int argc, char **argv) {
    unsigned long rounds = 200000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    leak_malloc(7, 2345);
    leak_calloc(9, 13, 17);
    churn(rounds);

    printf("{\"lines\":{\"leak_malloc\":%d,\"leak_calloc\":%d}}\n", call_lines[T_MALLOC],
           call_lines[T_CALLOC]);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
