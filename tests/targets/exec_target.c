/*
 * exec_target: leaks, then execs, and leaks again as a new image in the same process.
 * After an exec only the new image's blocks exist: the old image's memory is gone.
 *
 *   exec_target [--wait] [--pause] [--then-static] [--exit-when-probed] [--rounds N]
 *   exec_target --after-exec [--wait] [--pause] [--exit-when-probed] [--rounds N]
 *
 * Before the exec: 8 blocks of 50000 bytes at leak_before_exec, a churn (all freed), its
 * truth line (with its pid); with --pause, then "paused" and a line on stdin (the test
 * waits meanwhile for a report that shows the leak); then it execs itself as
 * `--after-exec`; with --then-static it execs exec_target_static, this program linked
 * statically (gcc -static: its malloc is in the executable), which it finds next to
 * itself.
 * After the exec: with --pause, "paused" and a line on stdin first (leakbpf misses what
 * a new image allocates before it has attached to its allocator, a static executable's
 * own malloc: the test waits for that); then 9 blocks of 333 bytes at leak_after_exec, a
 * churn (all freed), its truth line (with the same pid) and churn line, "done"; with
 * --wait, then EOF on stdin.
 * With --exit-when-probed (and --then-static: a tracer probes the static image only once
 * it is running, while a C library's probes are in before main), the new image then
 * waits until a tracer's first uprobe is in its allocation functions (a breakpoint
 * written over one of their first bytes) and exits at once, without waiting for EOF:
 * while the tracer is still attaching its other probes.
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

static void pause_us(unsigned long us) {
    struct timespec left = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
    while (nanosleep(&left, &left) != 0) {
        if (errno != EINTR)
            die("nanosleep");
    }
}

/* With --pause: "paused", then one line on stdin. */
static void pause_for_a_line(int pause) {
    if (!pause)
        return;
    printf("paused\n");
    fflush(stdout);
    char line[256];
    if (fgets(line, sizeof line, stdin) == NULL) {
        fprintf(stderr, "exec_target: stdin closed while paused\n");
        exit(1);
    }
}

/* The first bytes of the allocation functions, where uprobes write their breakpoints. */
#define WATCHED_BYTES 64
typedef void (*function)(void);
static const function watched[] = {
    (function)malloc, (function)calloc,         (function)realloc,
    (function)free,   (function)posix_memalign, (function)aligned_alloc,
};
#define WATCHED (sizeof watched / sizeof watched[0])

static void read_watched(unsigned char bytes[WATCHED][WATCHED_BYTES]) {
    for (size_t f = 0; f < WATCHED; f++) {
        const volatile unsigned char *code = (const volatile unsigned char *)(void *)watched[f];
        for (size_t i = 0; i < WATCHED_BYTES; i++)
            bytes[f][i] = code[i];
    }
}

/* The same bytes as the files on disk have them: what the code is before any probe. A
 * copy of the memory taken at start would not do: a fast tracer may have probed it
 * already. Each function's file and offset are found in /proc/self/maps. */
static void read_unprobed(unsigned char bytes[WATCHED][WATCHED_BYTES]) {
    for (size_t f = 0; f < WATCHED; f++) {
        unsigned long address = (unsigned long)(void *)watched[f];
        FILE *maps = fopen("/proc/self/maps", "r");
        if (maps == NULL)
            die("/proc/self/maps");
        char line[4096];
        int found = 0;
        while (!found && fgets(line, sizeof line, maps) != NULL) {
            unsigned long start, end, offset;
            char path[4096];
            if (sscanf(line, "%lx-%lx %*s %lx %*s %*s %4095s", &start, &end, &offset, path) != 4 ||
                address < start || address >= end)
                continue;
            FILE *file = fopen(path, "rb");
            if (file == NULL || fseek(file, (long)(address - start + offset), SEEK_SET) != 0 ||
                fread(bytes[f], 1, WATCHED_BYTES, file) != WATCHED_BYTES)
                die(path);
            fclose(file);
            found = 1;
        }
        fclose(maps);
        if (!found) {
            fprintf(stderr, "exec_target: no mapping holds function %zu\n", f);
            exit(1);
        }
    }
}

/* Returns once one of the allocation functions' first bytes has changed since `before`;
 * exits 1 after 30 s. */
static void await_probe(unsigned char before[WATCHED][WATCHED_BYTES]) {
    static unsigned char now[WATCHED][WATCHED_BYTES];
    for (int i = 0; i < 300000; i++) {
        read_watched(now);
        if (memcmp(before, now, sizeof now) != 0)
            return;
        pause_us(100);
    }
    fprintf(stderr, "exec_target: no probe in malloc, calloc, realloc, free, posix_memalign "
                    "or aligned_alloc after 30 s\n");
    exit(1);
}

static void usage(void) {
    fprintf(stderr, "usage: exec_target [--wait] [--pause] [--then-static] "
                    "[--exit-when-probed] [--rounds N]\n"
                    "       exec_target --after-exec [--wait] [--pause] "
                    "[--exit-when-probed] [--rounds N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int wait = 0, after = 0, then_static = 0, exit_when_probed = 0, pause = 0;
    unsigned long rounds = 20000;
    char rounds_text[32];
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else if (strcmp(argv[i], "--after-exec") == 0)
            after = 1;
        else if (strcmp(argv[i], "--then-static") == 0)
            then_static = 1;
        else if (strcmp(argv[i], "--exit-when-probed") == 0)
            exit_when_probed = 1;
        else if (strcmp(argv[i], "--pause") == 0)
            pause = 1;
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = strtoul(argv[++i], NULL, 10);
        else
            usage();
    }

    if (after) {
        pause_for_a_line(pause);
        struct truth t = {"leak_after_exec", 0, 0};
        leak_after_exec(&t);
        churn(rounds);
        print_process_truth(&t);
        print_process_churn("churn");
        if (exit_when_probed) {
            static unsigned char unprobed[WATCHED][WATCHED_BYTES];
            read_unprobed(unprobed);
            await_probe(unprobed);
            wait = 0;
        }
        finish(wait);
        return 0;
    }

    await_go(wait);
    struct truth t = {"leak_before_exec", 0, 0};
    leak_before_exec(&t);
    churn(rounds);
    print_process_truth(&t);
    pause_for_a_line(pause);
    snprintf(rounds_text, sizeof rounds_text, "%lu", rounds);
    char *next[8] = {"exec_target", "--after-exec", "--rounds", rounds_text};
    int n = 4;
    if (pause)
        next[n++] = "--pause";
    if (wait)
        next[n++] = "--wait";
    if (exit_when_probed)
        next[n++] = "--exit-when-probed";
    next[n] = NULL;
    exec_beside(then_static ? "exec_target_static" : NULL, next);
    return 1;
}
