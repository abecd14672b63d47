/* Seeds for the `elf` fuzz target (built by `cargo xtask bench fuzz`): a small
 * executable and shared library defining allocation functions, with an interpreter,
 * a soname and needed libraries for the mutations to start from. */
#include <stddef.h>

static char arena[1 << 16];
static size_t used;

void *malloc(size_t size) {
    if (size > sizeof arena - used) return NULL;
    used += size;
    return arena + used - size;
}

void free(void *pointer) { (void)pointer; }

int main(void) { return malloc(1) == NULL; }
