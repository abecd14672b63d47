// Workload (c): the chat-server demo (tests/targets/chat_server.cpp, included as is with
// its main renamed) driven by the bench: users join one of five rooms, post messages to
// the room's members and leave once newer users are online, as the demo's own
// simulation does.
//
//   chat_bench --seconds S             as fast as it can for S seconds
//   chat_bench --seconds S --rate R    at R messages per second (an offered load: each
//                                      message is due at start + i/R; when behind, it
//                                      catches up without sleeping)
//
//   --messages-per-user M              messages each user posts (8)
//   --online U                         users online before the oldest leaves (3)
//   --work N                           rounds of non-allocating work per message (see
//                                      encode_frame; 80 by default)
//
// The defaults make the workload the overhead issue describes: about 7 allocations per
// message (7.1 here) and allocation about 5% of the CPU (5.5% of the instructions under
// callgrind, in operator new and delete). The demo alone is mostly allocation (15
// allocations per message with 12 users online and 3 messages each, some 40% of its
// instructions); a real server also parses, encodes and checksums what it sends, which
// allocates nothing: encode_frame stands for that.
//
// Prints msgs_per_s (achieved), messages and seconds.
#include <time.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-function"
#define main chat_server_demo_main
#include "../../tests/targets/chat_server.cpp"
#undef main
#pragma GCC diagnostic pop

#include "bench_protocol.h"

#ifndef NOINLINE
#define NOINLINE __attribute__((noinline))
#endif

namespace {

const char* const kRooms[] = {"lobby", "rust", "cpp", "ebpf", "random"};

// Sleeps until `deadline` (CLOCK_MONOTONIC seconds) when it is still ahead.
void wait_until(double deadline) {
    if (deadline <= bench_now()) return;
    struct timespec ts;
    ts.tv_sec = static_cast<time_t>(deadline);
    ts.tv_nsec = static_cast<long>((deadline - static_cast<double>(ts.tv_sec)) * 1e9);
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, nullptr);
}

uint64_t volatile frame_checksum;

// The non-allocating part of a message's work: the frame for the wire, into a buffer on
// the stack, and `rounds` passes of an FNV-1a checksum over it.
NOINLINE void encode_frame(uint64_t user, uint64_t m, int rounds) {
    char frame[160];
    const int n = std::snprintf(frame, sizeof frame, "MSG user-%llu room-%llu message %llu",
                                static_cast<unsigned long long>(user),
                                static_cast<unsigned long long>(user % 5),
                                static_cast<unsigned long long>(m));
    uint64_t hash = 1469598103934665603ULL;
    for (int r = 0; r < rounds; ++r) {
        for (int i = 0; i < n; ++i) {
            hash ^= static_cast<unsigned char>(frame[i]);
            hash *= 1099511628211ULL;
        }
    }
    frame_checksum = hash;
}

}  // namespace

int main(int argc, char** argv) {
    const double seconds = bench_arg(argc, argv, "--seconds", 1.0);
    const double rate = bench_arg(argc, argv, "--rate", 0.0);
    const int work = static_cast<int>(bench_arg(argc, argv, "--work", 80));
    const auto per_user = static_cast<uint64_t>(bench_arg(argc, argv, "--messages-per-user", 8));
    const auto max_online = static_cast<size_t>(bench_arg(argc, argv, "--online", 3));
    bench_ready();

    Server server(false);
    std::deque<uint64_t> online;
    uint64_t joined = 0;
    uint64_t messages = 0;
    const double start = bench_now();
    const double until = start + seconds;
    double now = start;
    while (now < until) {
        std::string name = "user-" + std::to_string(joined) + "@chat.example.org";
        uint64_t id = server.handleJoin(name, kRooms[joined % std::size(kRooms)]);
        ++joined;
        online.push_back(id);
        for (uint64_t m = 0; m < per_user; ++m) {
            if (rate > 0) wait_until(start + static_cast<double>(messages) / rate);
            server.handleMessage(id, "message " + std::to_string(m) + ", hello everyone!");
            encode_frame(id, m, work);
            ++messages;
        }
        if (online.size() > max_online) {
            server.handleLeave(online.front());
            online.pop_front();
        }
        now = bench_now();
    }
    const double elapsed = now - start;
    for (uint64_t id : online) server.handleLeave(id);

    std::printf("msgs_per_s %.1f\nmessages %llu\nseconds %.6f\n",
                static_cast<double>(messages) / elapsed,
                static_cast<unsigned long long>(messages), elapsed);
    bench_done();
    return 0;
}
