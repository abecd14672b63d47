/*
 * Leaks through GLib, Debian's libglib2.0 (built with -O2 and no frame pointers): names
 * kept with g_strdup and buffers with g_malloc0, never given back, next to a churn that
 * frees the same with g_free. Every block comes from malloc inside libglib, called by
 * g_strdup or g_malloc0: the site is the program's function that called GLib.
 *
 * Protocol and truth: see alloc_target.h. Built with -O2 and no frame pointers, as
 * distributions build; the program's own functions do work after each call, so none is
 * a tail call.
 */
#include <glib.h>

#include "alloc_target.h"

const char *const target_name = "glib_strings";

enum { T_NAMES, T_BUFFERS, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"leak_names", 0, 0},
    {"leak_buffers", 0, 0},
};

NOINLINE void leak_names(int n) {
    char name[64];
    for (int i = 0; i < n; i++) {
        int length = snprintf(name, sizeof name, "session-%d@chat.example", i);
        keep(&truths[T_NAMES], g_strdup(name), (size_t)length + 1);
    }
}

NOINLINE void leak_buffers(int n) {
    for (int i = 0; i < n; i++)
        keep(&truths[T_BUFFERS], g_malloc0(300), 300);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        char *copy = g_strdup("a message on its way");
        got(copy);
        g_free(copy);
        stats.frees++;
        void *buffer = got(g_malloc0(64));
        g_free(buffer);
        stats.frees++;
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 50000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    leak_names(12);
    leak_buffers(7);
    churn(rounds);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
