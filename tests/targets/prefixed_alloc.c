/*
 * libprefixed_alloc.so: a tiny allocator exporting only prefixed names, je_malloc,
 * je_calloc, je_realloc and je_free, the way jemalloc built with
 * --with-jemalloc-prefix=je_ does. Its memory comes from mmap, never from libc's
 * malloc, so only probes on the prefixed names can see its blocks.
 *
 * Size classes of 16 << k usable bytes (16 B .. 1 MiB), each with a free list, carved
 * from 4 MiB mmap'd chunks; larger blocks get their own mapping. A 16-byte header before
 * each block holds its class (or its mapping's length). je_realloc within the block's
 * class returns the same address; otherwise it moves the block. Internal calls never go
 * through the exported names.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/mman.h>

#define EXPORT __attribute__((visibility("default")))

#define HEADER 16
#define CLASSES 17 /* 16 << 0 .. 16 << 16 = 1 MiB */
#define LARGE ((size_t)-1)
#define CHUNK ((size_t)4 << 20)
#define MAGIC ((size_t)0x6a655f616c6c6f63) /* "je_alloc" */

struct header {
    size_t class; /* index into the free lists, or LARGE */
    size_t length; /* LARGE: the mapping's length; else MAGIC */
};

struct free_block {
    struct free_block *next;
};

static struct free_block *free_lists[CLASSES];
static char *bump, *bump_end;
static int lock_word;

static void lock(void) {
    while (__atomic_exchange_n(&lock_word, 1, __ATOMIC_ACQUIRE))
        while (__atomic_load_n(&lock_word, __ATOMIC_RELAXED))
            __builtin_ia32_pause();
}

static void unlock(void) { __atomic_store_n(&lock_word, 0, __ATOMIC_RELEASE); }

static size_t class_size(size_t class) { return (size_t)16 << class; }

static size_t class_of(size_t size) {
    size_t class = 0;
    while (class_size(class) < size)
        class++;
    return class;
}

static void *map(size_t length) {
    void *p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? NULL : p;
}

static struct header *header_of(void *p) { return (struct header *)((char *)p - HEADER); }

static size_t usable(void *p) {
    struct header *h = header_of(p);
    return h->class == LARGE ? h->length - HEADER : class_size(h->class);
}

static void *alloc(size_t size) {
    if (size == 0)
        size = 1;
    if (size > class_size(CLASSES - 1)) {
        if (size > SIZE_MAX / 2) {
            errno = ENOMEM;
            return NULL;
        }
        size_t length = (size + HEADER + 4095) & ~(size_t)4095;
        struct header *h = map(length);
        if (h == NULL)
            return NULL;
        h->class = LARGE;
        h->length = length;
        return (char *)h + HEADER;
    }
    size_t class = class_of(size);
    size_t block = HEADER + class_size(class);
    lock();
    struct free_block *f = free_lists[class];
    struct header *h;
    if (f != NULL) {
        free_lists[class] = f->next;
        h = header_of(f);
    } else {
        if (bump == NULL || (size_t)(bump_end - bump) < block) {
            char *chunk = map(CHUNK);
            if (chunk == NULL) {
                unlock();
                return NULL;
            }
            bump = chunk;
            bump_end = chunk + CHUNK;
        }
        h = (struct header *)bump;
        bump += block;
    }
    unlock();
    h->class = class;
    h->length = MAGIC;
    return (char *)h + HEADER;
}

static void release(void *p) {
    if (p == NULL)
        return;
    struct header *h = header_of(p);
    if (h->class == LARGE) {
        munmap(h, h->length);
        return;
    }
    struct free_block *f = p;
    lock();
    f->next = free_lists[h->class];
    free_lists[h->class] = f;
    unlock();
}

EXPORT void *je_malloc(size_t size) { return alloc(size); }

EXPORT void *je_calloc(size_t nmemb, size_t size) {
    size_t total;
    if (__builtin_mul_overflow(nmemb, size, &total)) {
        errno = ENOMEM;
        return NULL;
    }
    void *p = alloc(total);
    if (p != NULL)
        memset(p, 0, total);
    return p;
}

/* je_realloc(NULL, n) allocates; je_realloc(p, 0) frees p and returns NULL. */
EXPORT void *je_realloc(void *p, size_t size) {
    if (p == NULL)
        return alloc(size);
    if (size == 0) {
        release(p);
        return NULL;
    }
    size_t have = usable(p);
    if (size <= have && header_of(p)->class != LARGE && class_of(size) == header_of(p)->class)
        return p;
    void *q = alloc(size);
    if (q == NULL)
        return NULL;
    memcpy(q, p, size < have ? size : have);
    release(p);
    return q;
}

EXPORT void je_free(void *p) { release(p); }
