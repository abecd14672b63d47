/*
 * tcmalloc_new: linked with tcmalloc (libtcmalloc_minimal.so.4, ahead of libstdc++ and
 * libc), whose operator new and delete are its own code, calling no malloc. Leaks
 * through new, new[], nothrow new, aligned new, and malloc; churns blocks freed by
 * delete (sized and unsized), delete[] and free.
 *
 *   tcmalloc_new [--wait] [--rounds N]
 *
 * Protocol and truth: see alloc_target.h. The leaking functions are extern "C", so the
 * report names them without parameter lists.
 */
#include <cstdint>
#include <new>

#include "alloc_target.h"

const char *const target_name = "tcmalloc_new";

namespace {

struct Node {
    long id;
    char payload[88];
};

struct alignas(64) Aligned {
    char bytes[192];
};

struct Small {
    int value;
    char tag[20];
};

enum { T_NEW, T_NEW_ARRAY, T_NEW_NOTHROW, T_NEW_ALIGNED, T_MALLOC, T_COUNT };

truth truths[T_COUNT] = {
    {"leak_new", 0, 0},           {"leak_new_array", 0, 0}, {"leak_new_nothrow", 0, 0},
    {"leak_new_aligned", 0, 0},   {"leak_malloc", 0, 0},
};

/* Makes a block escape, so the compiler cannot pair a new with its delete and drop
 * both (C++14 allows it). */
NOINLINE void escape(void *p) { asm volatile("" : : "r"(p) : "memory"); }

} // namespace

extern "C" {

NOINLINE void leak_new(int count) {
    for (int i = 0; i < count; i++) {
        Node *node = new Node();
        node->id = i;
        keep(&truths[T_NEW], node, sizeof(Node));
    }
}

NOINLINE void leak_new_array(int count, size_t n) {
    LEAK_EACH(&truths[T_NEW_ARRAY], count, new std::uint32_t[n](), n * sizeof(std::uint32_t));
}

NOINLINE void leak_new_nothrow(int count) {
    LEAK_EACH(&truths[T_NEW_NOTHROW], count, new (std::nothrow) Small(), sizeof(Small));
}

/* alignof(Aligned) exceeds __STDCPP_DEFAULT_NEW_ALIGNMENT__: operator new(size_t,
 * align_val_t). */
NOINLINE void leak_new_aligned(int count) {
    LEAK_EACH(&truths[T_NEW_ALIGNED], count, new Aligned(), sizeof(Aligned));
}

NOINLINE void leak_malloc(int count, size_t size) {
    LEAK_EACH(&truths[T_MALLOC], count, malloc(size), size);
}

/* new and delete of every form, and malloc and free, all given back. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        Node *node = new Node();
        stats.allocations++;
        escape(node);
        delete node; /* sized delete */
        stats.frees++;

        std::size_t n = 1 + i % 200;
        std::uint32_t *array = new std::uint32_t[n];
        stats.allocations++;
        escape(array);
        delete[] array;
        stats.frees++;

        Aligned *aligned = new Aligned();
        stats.allocations++;
        escape(aligned);
        delete aligned; /* sized, aligned delete */
        stats.frees++;

        Small *small = new (std::nothrow) Small();
        got(small);
        escape(small);
        ::operator delete(small, std::nothrow);
        stats.frees++;

        void *raw = ::operator new(24 + i % 1000);
        stats.allocations++;
        escape(raw);
        ::operator delete(raw); /* unsized delete */
        stats.frees++;

        void *block = got(malloc(16 + i % 241));
        escape(block);
        release(block);
    }
}

} // extern "C"

int main(int argc, char **argv) {
    unsigned long rounds = 200000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);

    /* Every function leaks a different number of blocks of a different size. */
    leak_new(9);
    leak_new_array(4, 250);
    leak_new_nothrow(6);
    leak_new_aligned(3);
    leak_malloc(5, 1313);
    churn(rounds);

    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
