/*
 * hostile_names: leaks from functions whose names are hostile to whoever prints them:
 * one 4,111 characters long, one holding control characters (an escape sequence, a
 * newline), one holding bytes that are not UTF-8; and from one plainly named function,
 * which must stay named beside them.
 *
 *   hostile_names [--wait] [--rounds N]
 *
 * C has no way to write the last two names, so they are written here with a PATCHED
 * placeholder, and the Makefile rewrites that placeholder's bytes, in place, wherever the
 * linked program holds them: the symbol table and the DWARF names. Their truths are
 * labelled `control_chars` and `invalid_utf8` instead: a truth line must stay valid JSON.
 *
 * Protocol and truth: see alloc_target.h.
 */
#include "alloc_target.h"

const char *const target_name = "hostile_names";

#define CAT_(a, b) a##b
#define CAT(a, b) CAT_(a, b)
#define TWICE(x) CAT(x, x)
#define X16(x) TWICE(TWICE(TWICE(TWICE(x))))
#define STRING_(x) #x
#define STRING(x) STRING_(x)

/* leak_long_name_ and 256 times 0123456789abcdef. */
#define LONG_NAME CAT(leak_long_name_, X16(X16(0123456789abcdef)))

enum { T_LONG, T_CONTROL, T_INVALID, T_PLAIN, T_COUNT };

static struct truth truths[T_COUNT] = {
    {STRING(LONG_NAME), 0, 0},
    {"control_chars", 0, 0},
    {"invalid_utf8", 0, 0},
    {"leak_plain_name", 0, 0},
};

NOINLINE void LONG_NAME(int count, size_t size) {
    LEAK_EACH(&truths[T_LONG], count, malloc(size), size);
}

NOINLINE void leak_control_chars_PATCHED(int count, size_t size) {
    LEAK_EACH(&truths[T_CONTROL], count, malloc(size), size);
}

NOINLINE void leak_invalid_utf8_PATCHED(int count, size_t size) {
    LEAK_EACH(&truths[T_INVALID], count, malloc(size), size);
}

NOINLINE void leak_plain_name(int count, size_t size) {
    LEAK_EACH(&truths[T_PLAIN], count, malloc(size), size);
}

NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++)
        CHURN_MALLOC_CALLOC_REALLOC(i, 16 + i % 241, 200);
}

int main(int argc, char **argv) {
    unsigned long rounds = 50000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    LONG_NAME(3, 1111);
    leak_control_chars_PATCHED(5, 2222);
    leak_invalid_utf8_PATCHED(7, 3333);
    leak_plain_name(9, 4444);
    churn(rounds);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
