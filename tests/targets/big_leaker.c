/*
 * big_leaker: leaks gigabytes, for system-wide tracing (--all), where a process must hold
 * more than any other on the machine to rank among the top ones. The blocks are 4 MiB,
 * so malloc maps each on its own, and nothing touches them: they cost address space, not
 * memory. It allocates nothing else.
 *
 *   big_leaker [--wait] [--blocks N]      (N blocks of 4 MiB at leak_big; 256)
 *
 * Protocol and truth: see alloc_target.h; no churn line.
 */
#include "alloc_target.h"

const char *const target_name = "big_leaker";

#define BLOCK_SIZE ((size_t)4 << 20)

NOINLINE void leak_big(struct truth *t, unsigned long blocks) {
    LEAK_EACH(t, (int)blocks, malloc(BLOCK_SIZE), BLOCK_SIZE);
}

int main(int argc, char **argv) {
    unsigned long blocks = 256;
    int wait = parse_options(argc, argv, "--blocks", &blocks, NULL, NULL);
    if (blocks > MAX_KEPT) {
        fprintf(stderr, "big_leaker: at most %d blocks\n", MAX_KEPT);
        return 2;
    }
    await_go(wait);
    struct truth t = {"leak_big", 0, 0};
    leak_big(&t, blocks);
    print_truths(&t, 1);
    finish(wait);
    return 0;
}
