/*
 * Leaks through the standard containers, as C++ programs do: a vector that grew by
 * push_back and a map that grew by operator[], both never destroyed, each at a function
 * of the program's own; next to a churn that builds and destroys the same containers.
 * Every block of a leaked container comes from libstdc++'s templates (new_allocator,
 * _M_realloc_insert, _Rb_tree::_M_create_node) and operator new: the site is the
 * function that called the container.
 *
 * Protocol and truth: see alloc_target.h. The truths count the blocks each container
 * holds: the vector's last buffer and its own object; the map's nodes and its object.
 */
#include <map>
#include <vector>

#include "alloc_target.h"

const char *const target_name = "containers_growth";

enum { T_VECTOR, T_MAP, T_COUNT };

static struct truth truths[T_COUNT] = {
    {"leak_records", 0, 0},
    {"leak_index", 0, 0},
};

struct Record {
    unsigned long id;
    char name[40];
};

struct Blob {
    char bytes[72];
};

/* The node libstdc++'s std::map allocates per element. */
using Node = std::_Rb_tree_node<std::pair<const int, Blob>>;

static std::vector<Record> *records;
static std::map<int, Blob> *index_by_id;

NOINLINE void leak_records(unsigned long n) {
    records = new std::vector<Record>;
    for (unsigned long i = 0; i < n; i++)
        records->push_back(Record{i, {}});
    truths[T_VECTOR].bytes = sizeof *records + records->capacity() * sizeof(Record);
    truths[T_VECTOR].count = 2;
}

NOINLINE void leak_index(unsigned long n) {
    index_by_id = new std::map<int, Blob>;
    for (unsigned long i = 0; i < n; i++)
        (*index_by_id)[(int)i].bytes[0] = (char)i;
    truths[T_MAP].bytes = sizeof *index_by_id + n * sizeof(Node);
    truths[T_MAP].count = 1 + n;
}

/* Each round a vector grown to 9 records (buffers of 1, 2, 4, 8 and 16) and a map of 3
 * nodes, destroyed. */
NOINLINE void churn(unsigned long rounds) {
    for (unsigned long i = 0; i < rounds; i++) {
        std::vector<Record> grown;
        for (unsigned long j = 0; j < 9; j++)
            grown.push_back(Record{j, {}});
        std::map<int, Blob> small;
        for (int j = 0; j < 3; j++)
            small[j].bytes[0] = (char)j;
        stats.allocations += 5 + 3;
        stats.frees += 5 + 3;
    }
}

int main(int argc, char **argv) {
    unsigned long rounds = 20000;
    int wait = parse_args(argc, argv, &rounds);
    await_go(wait);
    leak_records(100);
    leak_index(50);
    churn(rounds);
    report_and_wait(truths, T_COUNT, wait);
    return 0;
}
