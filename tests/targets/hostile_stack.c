/*
 * hostile_stack: calls malloc with the frame pointer the way code without frame pointers
 * may leave it: garbage, a frame that points at itself, and a fake chain longer than any
 * walk, from inline assembly the unwind tables know nothing of. leakbpf must still name
 * the direct caller (the allocator's own frame is right), report none of the made-up
 * frames, stop every walk, and keep exact figures.
 *
 *   hostile_stack [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h. Built with -mno-red-zone: the inline assembly
 * pushes below the stack pointer.
 */
#define _GNU_SOURCE
#include <stdint.h>

#include "alloc_target.h"

const char *const target_name = "hostile_stack";

enum { T_GARBAGE, T_LOOP, T_DEEP, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"leak_with_garbage_rbp", 0, 0},
    {"leak_with_looping_rbp", 0, 0},
    {"leak_with_endless_chain", 0, 0},
};

/* malloc(size) called with %rbp = fp. Inlined, so its caller is the frame leakbpf sees. */
static inline __attribute__((always_inline)) void *malloc_with_rbp(size_t size, uintptr_t fp) {
    void *result;
    __asm__ volatile("push %%rbp\n\t"
                     "sub $8, %%rsp\n\t" /* with the push: the call stays 16-byte aligned */
                     "mov %[fp], %%rbp\n\t"
                     "mov %[size], %%rdi\n\t"
                     "call malloc@PLT\n\t"
                     "add $8, %%rsp\n\t"
                     "pop %%rbp\n\t"
                     : "=a"(result)
                     : [fp] "r"(fp), [size] "r"(size)
                     : "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "xmm0", "xmm1",
                       "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm12", "xmm13", "xmm14", "xmm15", "memory", "cc");
    return result;
}

/* A non-canonical address: no walk can read it. */
NOINLINE void leak_with_garbage_rbp(int count, size_t size) {
    LEAK_EACH(&truths[T_GARBAGE], count, malloc_with_rbp(size, 0x4141414141414140u), size);
}

/* A frame whose saved frame pointer is itself. */
NOINLINE void leak_with_looping_rbp(int count, size_t size) {
    volatile uintptr_t frame[2];
    frame[0] = (uintptr_t)frame;
    frame[1] = 0x1234;
    LEAK_EACH(&truths[T_LOOP], count, malloc_with_rbp(size, (uintptr_t)frame), size);
}

/* A well-formed chain of 200 frames with made-up return addresses. */
NOINLINE void leak_with_endless_chain(int count, size_t size) {
    enum { DEPTH = 200 };
    volatile uintptr_t chain[2 * DEPTH + 2];
    for (int i = 0; i <= DEPTH; i++) {
        chain[2 * i] = (uintptr_t)&chain[2 * (i + 1)];
        chain[2 * i + 1] = 0x10000 + 16 * (uintptr_t)i;
    }
    chain[2 * DEPTH] = 0;
    LEAK_EACH(&truths[T_DEEP], count, malloc_with_rbp(size, (uintptr_t)chain), size);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        release(got(malloc_with_rbp(16 + i % 241, 0x4141414141414140u)));
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 100000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    leak_with_garbage_rbp(3, 1111);
    leak_with_looping_rbp(5, 2222);
    leak_with_endless_chain(7, 3333);
    churn(rounds);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
