// Workload (b): rounds of calloc, malloc + realloc, posix_memalign, operator new and
// operator new[] (each freed with its partner), for --seconds S. A round is 5
// allocations, 1 realloc and 5 frees. Prints ns_per_round.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <new>

#include "bench_protocol.h"

namespace {

struct Node {
    Node* next;
    uint64_t payload[5];
};

void* volatile sink;

__attribute__((noinline)) void round_trip(size_t size) {
    char* zeroed = static_cast<char*>(std::calloc(1, size));
    char* grown = static_cast<char*>(std::malloc(size));
    grown[0] = 1;
    grown = static_cast<char*>(std::realloc(grown, size * 2));
    void* aligned = nullptr;
    if (posix_memalign(&aligned, 64, size) != 0) std::abort();
    Node* node = new Node();
    char* array = new char[size];
    array[0] = zeroed[0];
    sink = zeroed;
    sink = grown;
    sink = aligned;
    sink = node;
    sink = array;
    delete[] array;
    delete node;
    std::free(aligned);
    std::free(grown);
    std::free(zeroed);
}

}  // namespace

int main(int argc, char** argv) {
    const double seconds = bench_arg(argc, argv, "--seconds", 1.0);
    bench_ready();
    const double start = bench_now();
    const double until = start + seconds;
    uint64_t rounds = 0;
    double now;
    do {
        for (int i = 0; i < 256; ++i) round_trip(16 + (static_cast<size_t>(i) * 37) % 241);
        rounds += 256;
        now = bench_now();
    } while (now < until);

    const double elapsed = now - start;
    std::printf("ns_per_round %.3f\nrounds %llu\nseconds %.6f\n",
                elapsed * 1e9 / static_cast<double>(rounds),
                static_cast<unsigned long long>(rounds), elapsed);
    bench_done();
    return 0;
}
