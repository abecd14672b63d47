/*
 * Leaks through a wrapper of the program's own, as servers have them (`app_xalloc`,
 * named to leakbpf by --alloc-fn), from two callers that each leak their own amount,
 * next to a churn through the same wrapper that frees everything.
 *
 * Protocol and truth: see alloc_target.h. The truths name the wrappers' callers.
 */
#include "alloc_target.h"

const char *const target_name = "wrappers";

enum { T_A, T_B, T_COUNT };

static struct truth truths[T_COUNT] = {
    [T_A] = {"leak_through_wrapper_a", 0, 0},
    [T_B] = {"leak_through_wrapper_b", 0, 0},
};

static unsigned long wrapped;

/* The program's allocation wrapper: counts, then asks malloc. */
NOINLINE void *app_xalloc(size_t size) {
    void *p = malloc(size);
    if (p == NULL)
        die("app_xalloc");
    wrapped++;
    return p;
}

NOINLINE void leak_through_wrapper_a(void) {
    for (int i = 0; i < 5; i++)
        keep(&truths[T_A], app_xalloc(100), 100);
}

NOINLINE void leak_through_wrapper_b(void) {
    for (int i = 0; i < 3; i++)
        keep(&truths[T_B], app_xalloc(200), 200);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++)
        release(got(app_xalloc(48)));
}

int main(int argc, char **argv) {
    unsigned long rounds = 100000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    leak_through_wrapper_a();
    leak_through_wrapper_b();
    churn(rounds);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
