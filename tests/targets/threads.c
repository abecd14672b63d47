/*
 * threads: 8 threads allocate blocks that the next thread frees (every free crosses
 * threads), hundreds of thousands in all; each thread also leaks (index + 1) blocks of
 * (100 + 8 * index) bytes from thread_leak.
 *
 *   threads [--wait] [--blocks N]     (N blocks passed on by each thread)
 *
 * Protocol and truth: see alloc_target.h. One truth line, for thread_leak, with the
 * totals the threads actually leaked; the churn line is make_block's (the blocks passed
 * between threads: allocated by one, freed by the next).
 */
#include <pthread.h>

#include "alloc_target.h"

#define THREADS 8

const char *const target_name = "threads";

/* A block on its way to be freed: the queue's link lives in the block itself, so the
 * queue allocates nothing of its own. */
struct block {
    struct block *next;
    size_t size;
};

struct queue {
    pthread_mutex_t lock;
    pthread_cond_t nonempty;
    struct block *head;
};

static struct queue queues[THREADS];
static unsigned long blocks_per_thread = 40000;

/* What thread_leak leaked, over all threads, and the churn's stats: under truth_lock. */
static pthread_mutex_t truth_lock = PTHREAD_MUTEX_INITIALIZER;
static struct truth leaked = {"thread_leak", 0, 0};

NOINLINE void thread_leak(int index) {
    size_t size = 100 + 8 * (size_t)index;
    for (int i = 0; i <= index; i++) {
        void *p = malloc(size);
        pthread_mutex_lock(&truth_lock);
        keep(&leaked, p, size);
        pthread_mutex_unlock(&truth_lock);
    }
}

NOINLINE static struct block *make_block(unsigned long n) {
    size_t size = sizeof(struct block) + n % 497; /* 16..512 bytes */
    struct block *b = malloc(size);
    if (b == NULL)
        die("malloc");
    b->size = size;
    return b;
}

static void push(struct queue *q, struct block *b) {
    pthread_mutex_lock(&q->lock);
    b->next = q->head;
    q->head = b;
    pthread_cond_signal(&q->nonempty);
    pthread_mutex_unlock(&q->lock);
}

/* Takes every queued block; with `block`, waits until there is one. */
static struct block *take_all(struct queue *q, int block) {
    pthread_mutex_lock(&q->lock);
    while (block && q->head == NULL)
        pthread_cond_wait(&q->nonempty, &q->lock);
    struct block *all = q->head;
    q->head = NULL;
    pthread_mutex_unlock(&q->lock);
    return all;
}

/* Frees a list of blocks another thread allocated; returns how many. */
NOINLINE static unsigned long free_blocks(struct block *b) {
    unsigned long n = 0;
    while (b != NULL) {
        struct block *next = b->next;
        memset(b, 0, b->size);
        free(b);
        b = next;
        n++;
    }
    return n;
}

static void *worker(void *arg) {
    int index = (int)(long)arg;
    struct queue *mine = &queues[index];
    struct queue *next = &queues[(index + 1) % THREADS];
    unsigned long made = 0, freed = 0;

    thread_leak(index);
    while (made < blocks_per_thread) {
        push(next, make_block(made + (unsigned long)index));
        made++;
        if (made % 64 == 0)
            freed += free_blocks(take_all(mine, 0));
    }
    /* The previous thread passes exactly as many blocks as this one did. */
    while (freed < blocks_per_thread)
        freed += free_blocks(take_all(mine, 1));
    pthread_mutex_lock(&truth_lock);
    stats.allocations += made;
    stats.frees += freed;
    pthread_mutex_unlock(&truth_lock);
    return NULL;
}

int main(int argc, char **argv) {
    int wait = parse_options(argc, argv, "--blocks", &blocks_per_thread, NULL, NULL);
    await_go(wait);

    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_mutex_init(&queues[i].lock, NULL);
        pthread_cond_init(&queues[i].nonempty, NULL);
    }
    for (long i = 0; i < THREADS; i++) {
        int err = pthread_create(&tids[i], NULL, worker, (void *)i);
        if (err != 0) {
            errno = err;
            die("pthread_create");
        }
    }
    for (int i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);

    print_truths(&leaked, 1);
    print_churn("make_block", 0);
    finish(wait);
    return 0;
}
