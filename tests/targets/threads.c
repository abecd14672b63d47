/*
 * threads: 8 threads allocate blocks that the next thread frees (every free crosses
 * threads), hundreds of thousands in all; each thread also leaks (index + 1) blocks of
 * (100 + 8 * index) bytes from thread_leak.
 *
 *   threads [--wait] [--blocks N]     (N blocks passed on by each thread)
 *
 * Protocol: see leaker.c. One truth line, for thread_leak, with the totals the threads
 * actually leaked.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NOINLINE __attribute__((noinline, noipa))
#define THREADS 8

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

/* What thread_leak leaked, over all threads. */
static pthread_mutex_t truth_lock = PTHREAD_MUTEX_INITIALIZER;
static size_t leaked_bytes;
static size_t leaked_count;
/* What passed between threads: allocated by one, freed by the next. */
static unsigned long passed_made, passed_freed;
#define MAX_KEPT 64
void *kept[MAX_KEPT];

static void die(const char *what) {
    fprintf(stderr, "threads: %s failed\n", what);
    exit(1);
}

NOINLINE void thread_leak(int index) {
    size_t size = 100 + 8 * (size_t)index;
    for (int i = 0; i <= index; i++) {
        void *p = malloc(size);
        if (p == NULL)
            die("malloc");
        pthread_mutex_lock(&truth_lock);
        if (leaked_count == MAX_KEPT)
            die("keeping a leak");
        kept[leaked_count] = p;
        leaked_bytes += size;
        leaked_count += 1;
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
    passed_made += made;
    passed_freed += freed;
    pthread_mutex_unlock(&truth_lock);
    return NULL;
}

static void wait_line(void) {
    char line[256];
    if (fgets(line, sizeof line, stdin) == NULL)
        die("reading go from stdin");
}

int main(int argc, char **argv) {
    int wait = 0;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--wait") == 0) {
            wait = 1;
        } else if (strcmp(argv[i], "--blocks") == 0 && i + 1 < argc) {
            blocks_per_thread = strtoul(argv[++i], NULL, 10);
        } else {
            fprintf(stderr, "usage: threads [--wait] [--blocks N]\n");
            return 2;
        }
    }
    if (wait) {
        printf("ready\n");
        fflush(stdout);
        wait_line();
    }

    pthread_t tids[THREADS];
    for (int i = 0; i < THREADS; i++) {
        pthread_mutex_init(&queues[i].lock, NULL);
        pthread_cond_init(&queues[i].nonempty, NULL);
    }
    for (long i = 0; i < THREADS; i++)
        if (pthread_create(&tids[i], NULL, worker, (void *)i) != 0)
            die("pthread_create");
    for (int i = 0; i < THREADS; i++)
        pthread_join(tids[i], NULL);

    printf("{\"truth\":{\"function\":\"thread_leak\",\"bytes\":%zu,\"count\":%zu}}\n",
           leaked_bytes, leaked_count);
    printf("{\"churn\":{\"function\":\"make_block\",\"allocations\":%lu,\"frees\":%lu}}\n",
           passed_made, passed_freed);
    printf("done\n");
    fflush(stdout);

    if (wait) {
        char line[256];
        while (fgets(line, sizeof line, stdin) != NULL) {
        }
    }
    return 0;
}
