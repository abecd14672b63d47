/*
 * exec_target: leaks, then execs, and leaks again as a new image in the same process.
 * After an exec only the new image's blocks exist: the old image's memory is gone.
 *
 *   exec_target [--wait] [--pause-ms MS] [--then-static] [--rounds N]
 *   exec_target --after-exec [--wait] [--pause-ms MS] [--rounds N]   (the new image)
 *
 * Before the exec: 8 blocks of 50000 bytes at leak_before_exec, a churn (all freed), its
 * truth line (with its pid), then a pause of MS milliseconds (0), so that reports can
 * show the leak, then it execs itself as `--after-exec`; with --then-static it execs
 * exec_target_static, this program linked statically (gcc -static: its malloc is in the
 * executable), which it finds next to itself.
 * After the exec: the same pause first (leakbpf misses what a new image allocates before
 * it has attached to its allocator, a static executable's own malloc: that takes it
 * milliseconds), then 9 blocks of 333 bytes at leak_after_exec, a churn (all freed), its
 * truth line (with the same pid) and churn line, "done"; with --wait, then EOF on stdin.
 *
 * Protocol: see alloc_target.h; "ready" and go (with --wait) come before the exec, "done"
 * after it. The truth lines name the process (print_process_truth).
 */
#define _GNU_SOURCE
#include <time.h>

#include "alloc_target.h"

const char *const target_name = "exec_target";

NOINLINE void leak_before_exec(struct truth *t) {
    LEAK_EACH(t, 8, malloc(50000), 50000);
}

NOINLINE void leak_after_exec(struct truth *t) {
    LEAK_EACH(t, 9, malloc(333), 333);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */
        CHURN_MALLOC_CALLOC_REALLOC(i, size, 200);
        CHURN_POSIX_MEMALIGN(size);
    }
}

static void pause_ms(unsigned long ms) {
    struct timespec left = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000L};
    while (nanosleep(&left, &left) != 0) {
        if (errno != EINTR)
            die("nanosleep");
    }
}

static void usage(void) {
    fprintf(stderr, "usage: exec_target [--wait] [--pause-ms MS] [--then-static] [--rounds N]\n"
                    "       exec_target --after-exec [--wait] [--rounds N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int wait = 0, after = 0, then_static = 0;
    unsigned long pause = 0, rounds = 20000;
    char rounds_text[32], pause_text[32];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else if (strcmp(argv[i], "--after-exec") == 0)
            after = 1;
        else if (strcmp(argv[i], "--then-static") == 0)
            then_static = 1;
        else if (strcmp(argv[i], "--pause-ms") == 0 && i + 1 < argc)
            pause = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = strtoul(argv[++i], NULL, 10);
        else
            usage();
    }

    if (after) {
        pause_ms(pause);
        struct truth t = {"leak_after_exec", 0, 0};
        leak_after_exec(&t);
        churn(rounds);
        print_process_truth(&t);
        print_process_churn("churn");
        finish(wait);
        return 0;
    }

    await_go(wait);
    struct truth t = {"leak_before_exec", 0, 0};
    leak_before_exec(&t);
    churn(rounds);
    print_process_truth(&t);
    pause_ms(pause);
    snprintf(rounds_text, sizeof rounds_text, "%lu", rounds);
    snprintf(pause_text, sizeof pause_text, "%lu", pause);
    char *next[] = {"exec_target", "--after-exec", "--rounds", rounds_text, "--pause-ms",
                    pause_text, wait ? "--wait" : NULL, NULL};
    exec_beside(then_static ? "exec_target_static" : NULL, next);
    return 1;
}
