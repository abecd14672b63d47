/*
 * forker: a process tree, for --follow-forks. The parent leaks at leak_in_parent, then
 * forks N children; child 1 (or 0, with one child) forks a grandchild; one more child
 * execs this program again; a last one is started with posix_spawn. Every process leaks
 * its own amount and prints its own truth.
 *
 *   forker [--wait] [--children N] [--rounds N]      (3 children, 20000 churn rounds)
 *   forker --after-exec ACK_FD [--wait] [--rounds N] (the exec'd and spawned images)
 *
 * The processes, each numbered k:
 * - the parent: 7 blocks of 4321 bytes at leak_in_parent; no churn. It forks the others
 *   after its leak: they hold copies of its blocks, which are not theirs to report.
 * - child k, k = 0..N-1, and the grandchild, k = N: (k + 1) blocks of (2000 + 111 k)
 *   bytes at leak_in_child, then a churn of --rounds rounds whose blocks are all freed.
 *   The grandchild's parent forks it after its own leak.
 * - the exec child, k = N + 1: (k + 1) blocks of (2000 + 111 k) bytes at
 *   leak_before_exec, then it execs `forker --after-exec`, whose image leaks 5 blocks of
 *   777 bytes at leak_after_exec, what the process holds at the end, and churns like a
 *   child (so it lives on after its leak like the others).
 * - the spawned child, k = N + 2: posix_spawn starts it (glibc: a clone sharing the
 *   parent's memory, CLONE_VM | CLONE_VFORK, that execs at once) as `forker --after-exec`,
 *   which leaks and churns as above.
 *
 * Protocol (see alloc_target.h), over all the processes: with --wait, "ready" and a line
 * on stdin, from the parent. Each process prints its truth line (with its pid and its
 * parent's pid) and, when it churned, a churn line with its pid, then tells the parent
 * through a pipe. Once every process has, the parent prints "done": all truths come
 * before it. With --wait every process then waits for EOF on stdin (the processes stay
 * alive until the test is done with them), else exits at once; each parent reaps its
 * children before it exits, and exits 1 if one failed.
 */
#define _GNU_SOURCE
#include <spawn.h>
#include <sys/wait.h>

#include "alloc_target.h"

const char *const target_name = "forker";

#define MAX_CHILDREN 64

NOINLINE void leak_in_parent(struct truth *t) {
    LEAK_EACH(t, 7, malloc(4321), 4321);
}

static size_t block_size(int index) {
    return 2000 + 111 * (size_t)index;
}

NOINLINE void leak_in_child(struct truth *t, int index) {
    LEAK_EACH(t, index + 1, malloc(block_size(index)), block_size(index));
}

NOINLINE void leak_before_exec(struct truth *t, int index) {
    LEAK_EACH(t, index + 1, malloc(block_size(index)), block_size(index));
}

NOINLINE void leak_after_exec(struct truth *t) {
    LEAK_EACH(t, 5, malloc(777), 777);
}

/* Blocks from every allocation function the churn bodies use, all freed. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        size_t size = 16 + i % 241; /* 16..256 */
        CHURN_MALLOC_CALLOC_REALLOC(i, size, 200);
        CHURN_POSIX_MEMALIGN(size);
    }
}

/* Tells the parent that this process's lines are out. */
static void acknowledge(int ack) {
    char byte = 1;
    if (write(ack, &byte, 1) != 1)
        die("write ack");
    close(ack);
}

/* With --wait, waits for EOF on stdin (inherited: it is the parent's). */
static void hold(int wait) {
    if (!wait)
        return;
    char line[256];
    while (fgets(line, sizeof line, stdin) != NULL) {
    }
}

/* Waits for the child `pid`; returns whether it exited 0. */
static int reap(pid_t pid) {
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            die("waitpid");
    }
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0)
        return 1;
    fprintf(stderr, "forker: pid %ld ended with status %#x\n", (long)pid, status);
    return 0;
}

static pid_t fork_or_die(void) {
    /* Nothing buffered may be printed twice. */
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0)
        die("fork");
    return pid;
}

/* The leaking child numbered `index`; with `forks_grandchild`, it forks the grandchild
 * numbered `grandchild_index` after its leak, which runs on from here as well. Never
 * returns. */
static void child(int index, int grandchild_index, int forks_grandchild, unsigned long rounds,
                  int ack, int wait) {
    /* Fresh counts: a fork copies the parent's. */
    memset(&stats, 0, sizeof stats);
    struct truth t = {"leak_in_child", 0, 0};
    leak_in_child(&t, index);
    pid_t grandchild = -1;
    if (forks_grandchild) {
        grandchild = fork_or_die();
        if (grandchild == 0) {
            /* The grandchild: its copy of its parent's blocks is not its leak. */
            memset(&stats, 0, sizeof stats);
            t = (struct truth){"leak_in_child", 0, 0};
            leak_in_child(&t, grandchild_index);
        }
    }
    churn(rounds);
    print_process_truth(&t);
    print_process_churn("churn");
    acknowledge(ack);
    hold(wait);
    int ok = grandchild <= 0 || reap(grandchild);
    _exit(ok ? 0 : 1);
}

/* The exec child: leaks, then becomes `forker --after-exec ACK_FD --rounds N [--wait]`. */
static void exec_child(int index, unsigned long rounds, int ack, int wait) {
    struct truth t = {"leak_before_exec", 0, 0};
    leak_before_exec(&t, index);
    print_process_truth(&t);
    char fd[32], rounds_text[32];
    snprintf(fd, sizeof fd, "%d", ack);
    snprintf(rounds_text, sizeof rounds_text, "%lu", rounds);
    char *argv[] = {"forker", "--after-exec", fd, "--rounds", rounds_text,
                    wait ? "--wait" : NULL, NULL};
    exec_beside(NULL, argv);
}

/* Starts `forker --after-exec ACK_FD --rounds N [--wait]` with posix_spawn. */
static pid_t spawn_child(int ack, unsigned long rounds, int wait) {
    extern char **environ;
    char path[4096], fd[32], rounds_text[32];
    program_beside(NULL, path);
    snprintf(fd, sizeof fd, "%d", ack);
    snprintf(rounds_text, sizeof rounds_text, "%lu", rounds);
    char *argv[] = {"forker", "--after-exec", fd, "--rounds", rounds_text,
                    wait ? "--wait" : NULL, NULL};
    fflush(stdout);
    pid_t pid;
    int err = posix_spawn(&pid, path, NULL, NULL, argv, environ);
    if (err != 0) {
        errno = err;
        die("posix_spawn");
    }
    return pid;
}

/* The exec child's (and the spawned child's) new image. */
static int after_exec(int ack, unsigned long rounds, int wait) {
    struct truth t = {"leak_after_exec", 0, 0};
    leak_after_exec(&t);
    churn(rounds);
    print_process_truth(&t);
    print_process_churn("churn");
    acknowledge(ack);
    hold(wait);
    return 0;
}

static void usage(void) {
    fprintf(stderr, "usage: forker [--wait] [--children N] [--rounds N]\n"
                    "       forker --after-exec ACK_FD [--wait] [--rounds N]\n");
    exit(2);
}

int main(int argc, char **argv) {
    int wait = 0;
    int ack_fd = -1;
    unsigned long children = 3, rounds = 20000;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0)
            wait = 1;
        else if (strcmp(argv[i], "--after-exec") == 0 && i + 1 < argc)
            ack_fd = atoi(argv[++i]);
        else if (strcmp(argv[i], "--children") == 0 && i + 1 < argc)
            children = strtoul(argv[++i], NULL, 10);
        else if (strcmp(argv[i], "--rounds") == 0 && i + 1 < argc)
            rounds = strtoul(argv[++i], NULL, 10);
        else
            usage();
    }
    if (ack_fd >= 0)
        return after_exec(ack_fd, rounds, wait);
    if (children < 1 || children > MAX_CHILDREN)
        usage();

    await_go(wait);
    struct truth t = {"leak_in_parent", 0, 0};
    leak_in_parent(&t);
    print_process_truth(&t);

    int ack[2];
    if (pipe(ack) != 0)
        die("pipe");
    int n = (int)children;
    /* The children, the grandchild (forked by child 1, or by 0 when alone), the exec
     * child, the spawned child. */
    int forker_of_grandchild = n > 1 ? 1 : 0;
    int expected = n + 3;
    pid_t pids[MAX_CHILDREN + 2];
    for (int k = 0; k <= n; k++) {
        pids[k] = fork_or_die();
        if (pids[k] != 0)
            continue;
        close(ack[0]);
        if (k == n)
            exec_child(n + 1, rounds, ack[1], wait);
        else
            child(k, n, k == forker_of_grandchild, rounds, ack[1], wait);
        _exit(1);
    }
    pids[n + 1] = spawn_child(ack[1], rounds, wait);
    close(ack[1]);

    /* Every process's lines come before "done". */
    for (int got = 0; got < expected;) {
        char bytes[64];
        ssize_t r = read(ack[0], bytes, sizeof bytes);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            fprintf(stderr, "forker: %d of %d processes reported\n", got, expected);
            exit(1);
        }
        got += (int)r;
    }
    close(ack[0]);

    int ok = 1;
    if (!wait) {
        for (int k = 0; k <= n + 1; k++)
            ok &= reap(pids[k]);
    }
    finish(wait);
    if (wait) {
        for (int k = 0; k <= n + 1; k++)
            ok &= reap(pids[k]);
    }
    return ok ? 0 : 1;
}
