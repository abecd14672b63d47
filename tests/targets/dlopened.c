/*
 * libdlopened.so: what dlopen_leaker loads at run time, after leakbpf attached: the
 * allocator's direct caller for its leaks, in code mapped after attach.
 */
#include <stdlib.h>

/* frames[0] of dlopen_leaker's leaks. */
__attribute__((noinline)) void *dlopened_malloc(size_t size) {
    void *block = malloc(size);
    /* Work after the call: it stays a call, not a jump, whatever the optimiser does. */
    __asm__ volatile("" ::: "memory");
    return block;
}
