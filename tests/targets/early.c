/*
 * early: leaks before main runs (from a constructor) and in main's very first
 * statement, which only a tracer attached before the program starts can see.
 *
 *   early [--wait]
 *
 * Protocol: see leaker.c, except that there is no "ready"/go handshake (the leaks
 * happen before anything could be read): --wait only makes it wait for EOF on stdin
 * after "done".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noipa))

void *kept[2];
static size_t ctor_bytes, ctor_count, main_bytes, main_count;

static void *must(void *p) {
    if (p == NULL) {
        fprintf(stderr, "early: malloc failed\n");
        exit(1);
    }
    return p;
}

/* Runs before main, as the dynamic loader initialises the program. */
__attribute__((constructor)) NOINLINE void early_ctor_leak(void) {
    size_t size = 1717;
    kept[0] = must(malloc(size));
    ctor_bytes += size;
    ctor_count += 1;
}

NOINLINE void early_main_leak(size_t size) {
    kept[1] = must(malloc(size));
    main_bytes += size;
    main_count += 1;
}

int main(int argc, char **argv) {
    early_main_leak(4242);

    int wait = argc > 1 && strcmp(argv[1], "--wait") == 0;
    if (argc > 2 || (argc == 2 && !wait)) {
        fprintf(stderr, "usage: early [--wait]\n");
        return 2;
    }
    printf("{\"truth\":{\"function\":\"early_ctor_leak\",\"bytes\":%zu,\"count\":%zu}}\n",
           ctor_bytes, ctor_count);
    printf("{\"truth\":{\"function\":\"early_main_leak\",\"bytes\":%zu,\"count\":%zu}}\n",
           main_bytes, main_count);
    printf("done\n");
    fflush(stdout);

    if (wait) {
        char line[256];
        while (fgets(line, sizeof line, stdin) != NULL) {
        }
    }
    return 0;
}
