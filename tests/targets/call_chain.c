/*
 * call_chain: leaks through a chain of functions of its own, as a server's request path
 * does: main -> serve -> handle_request -> store_record -> make_record -> malloc. Built
 * only as distributions build (-O2, no frame pointers; see the Makefile), so its stacks
 * can be walked only with unwind tables. Every function does work after its call, so
 * none of the calls is a tail call that would drop a frame, and handle_request has a
 * variable-length array, so its frame is addressed from rbp (its CFA is rbp-based),
 * unlike the others' (rsp-based).
 *
 *   call_chain [--wait] [--requests N]
 *
 * Each request leaks one record of 48, 64, 80 or 96 bytes. Protocol and truth: see
 * alloc_target.h; the churn, through the same chain, frees every record it makes.
 */
#include "alloc_target.h"

const char *const target_name = "call_chain";

enum { T_RECORD, T_COUNT };

static struct truth truths[T_COUNT] = {
    [T_RECORD] = {"make_record", 0, 0},
};

/* Results the compiler must compute, so the work after each call stays. */
static volatile unsigned long sink;

/* The allocating function: valgrind's and leakbpf's stacks both start here. */
NOINLINE char *make_record(size_t size, int leak) {
    char *record = malloc(size);
    if (record == NULL)
        die("make_record");
    memset(record, 'r', size);
    if (leak)
        keep(&truths[T_RECORD], record, size);
    else
        stats.allocations++;
    return record;
}

NOINLINE size_t store_record(size_t size, int leak) {
    char *record = make_record(size, leak);
    sink += (unsigned char)record[size - 1];
    if (!leak)
        release(record);
    return size;
}

NOINLINE size_t handle_request(unsigned request, int leak) {
    char scratch[request % 64 + 16];
    memset(scratch, (int)request, sizeof scratch);
    size_t stored = store_record(48 + request % 4 * 16, leak);
    sink += (unsigned char)scratch[request % 16];
    return stored;
}

NOINLINE size_t serve(unsigned long requests, int leak) {
    size_t total = 0;
    for (unsigned long i = 0; i < requests; i++)
        total += handle_request((unsigned)i, leak);
    sink += total;
    return total;
}

int main(int argc, char **argv) {
    unsigned long requests = 500;
    int wait = parse_options(argc, argv, "--requests", &requests, NULL, NULL);
    if (requests > MAX_KEPT) {
        fprintf(stderr, "%s: at most %d requests\n", target_name, MAX_KEPT);
        return 2;
    }
    await_go(wait);
    serve(requests, 1);
    serve(10 * requests, 0);
    sink += kept_count;
    print_truths(truths, T_COUNT);
    print_churn("make_record", 0);
    finish(wait);
    return 0;
}
